-- The process that runs a flow, so that the next flow can tell a run still going from one whose process was
-- killed (SIGKILL, a power cut): such a run stays `running` forever otherwise. The start time is the kernel's
-- (clock ticks since boot, /proc/PID/stat), so a pid reused by another process does not keep a dead run alive.
-- flow_runs.status: running | completed | failed | crashed.
ALTER TABLE flow_runs ADD COLUMN pid INTEGER;
ALTER TABLE flow_runs ADD COLUMN process_started VARCHAR;
