"""The small core every stage shares: config, paths, atomic writes, environment, devices
and distributed processes, hashing, progress, and the stage runner."""
