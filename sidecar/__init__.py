"""The node cache daemon: one pull per node, shared by every pod on it.

* :mod:`sidecar.config`   -- the frozen settings (flags, then environment)
* :mod:`sidecar.layout`   -- the cache directory layout (documented there)
* :mod:`sidecar.service`  -- ensure (single flight), leases, eviction, recovery
* :mod:`sidecar.app`      -- the aiohttp apps (unix socket: full API; TCP: public part)
* :mod:`sidecar.server`   -- running it; :mod:`sidecar.cli` -- ``weightstream cache ...``
* :mod:`sidecar.client`   -- the API client used by the CLI and the init container

See ``docs/sidecar.md`` for the API and operations.
"""
