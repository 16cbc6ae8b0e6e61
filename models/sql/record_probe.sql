-- One probe's result. `since` stays while the status does; `height_at` moves only with
-- the chain's height.
INSERT INTO node_health AS h (node_id, status, detail, since, last_ok, last_probe, height,
                              height_at)
VALUES (:node_id, :status, :detail, :at,
        CASE WHEN CAST(:status AS text) = 'ok' THEN CAST(:at AS timestamptz) END,
        :at, :height,
        CASE WHEN CAST(:height AS bigint) IS NOT NULL THEN CAST(:at AS timestamptz) END)
ON CONFLICT (node_id) DO UPDATE SET
    status = EXCLUDED.status,
    detail = EXCLUDED.detail,
    since = CASE WHEN h.status = EXCLUDED.status THEN h.since ELSE EXCLUDED.since END,
    last_ok = coalesce(EXCLUDED.last_ok, h.last_ok),
    last_probe = EXCLUDED.last_probe,
    height = coalesce(EXCLUDED.height, h.height),
    height_at = CASE WHEN EXCLUDED.height IS NOT NULL AND EXCLUDED.height IS DISTINCT FROM h.height
                     THEN EXCLUDED.last_probe ELSE h.height_at END,
    probes = h.probes + 1
