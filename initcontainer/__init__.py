"""weightstream's drop-in for the KServe storage initializer.

``python -m initcontainer SRC DST [SRC DST ...]`` (console script ``weightstream-init``)
takes the arguments KServe gives its storage-initializer init container, reads the same
environment, and lays files out the same way, but fetches through weightstream's engine:
concurrent ranged reads under one memory budget, resume, verification, atomic publish,
and the node cache when one runs on the node. See ``docs/initcontainer.md``.

Modules, in the order a run uses them:

* :mod:`.config`     argv + environment -> one frozen :class:`~.config.InitConfig`
* :mod:`.runner`     every pair concurrently: no-op, local link, node cache, download
* :mod:`.local`      ``file://`` and local paths, linked rather than copied
* :mod:`.nodecache`  the node cache hook (:class:`~.nodecache.NodeCacheClient`)
* :mod:`.archive`    a single downloaded archive, extracted safely
* :mod:`.progress`   periodic progress lines for ``kubectl logs``
* :mod:`.errors`     the errors this package adds to :mod:`streamer.errors`
"""
