-- A launch in :region went through: whatever paused the region's launches has passed.
DELETE FROM launch_pauses WHERE region = :region
