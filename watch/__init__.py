"""The health watch (`fleet watch`): probes every live node on an interval, records what
it saw in Postgres (node_health), and heals what is safe to heal by moving the node along
a watch edge of the lifecycle (the workers then do the work), or holds it with the cause.

A process of its own rather than part of the dispatcher: it holds hundreds of SSH
connections open and waits on slow hosts (asyncio, no Redis), it connects with its own
login (fleet_watch: it may read API root keys to sign read-only probe tokens, never a
wallet secret, and write no column of nodes), and a stuck probe can never delay a
dispatch. README.md, "The health watch", says what it heals and what it never touches."""
