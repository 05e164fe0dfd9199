"""The daemon's read-only S3 endpoint: unmodified S3 clients stream through the cache.

=====================  ==========================================================
:mod:`.sigv4`          SigV4 verification (header and presigned-query forms)
:mod:`.credentials`    scoped credentials: an access key naming a grant, its secret
:mod:`.service`        objects, ranges, listings over the cache service (no HTTP)
:mod:`.xml`            S3's XML documents (errors, listings)
:mod:`.handlers`       aiohttp: parse, call the service, answer (sendfile)
=====================  ==========================================================
"""
