"""One authenticated connection to the Kubernetes API server (kubernetes_asyncio).

:class:`KubeApi` wraps a ``kubernetes_asyncio`` :class:`ApiClient` built from explicit
settings (the daemon's ``--kube-api``, ``--kube-token-file``, ``--kube-ca-file``; their
defaults are the in-cluster ones: ``KUBERNETES_SERVICE_HOST/PORT`` and the service account
directory). The bearer token is re-read from its file before every request, because
projected service account tokens rotate (the kubelet rewrites the file about hourly).

Objects are handled as plain JSON documents (``dict``), not the library's generated models:
the daemon reads a few fields of pods and EndpointSlices, and one code path serves every
API version of a kind (EndpointSlices are ``discovery.k8s.io/v1`` from Kubernetes 1.21,
``v1beta1`` before). Every failure is raised as :class:`~sidecar.errors.KubeApiError`; its
message holds the request's name and the answer's status, never the token.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from ..errors import KubeApiError

Query = Sequence[tuple[str, str | int]]
_AUTH = ["BearerToken"]
_ACCEPT = {"Accept": "application/json"}


class KubeApi:
    """GET and watch collections of the API server as JSON, with the service account's
    token (re-read per request) and the cluster's CA."""

    def __init__(self, api_url: str, *, token_file: Path, ca_file: Path | None = None,
                 timeout: float = 10.0) -> None:
        conf = Configuration(host=api_url.rstrip("/"))
        if ca_file is not None and ca_file.exists():
            conf.ssl_ca_cert = str(ca_file)
        self._token_file = token_file
        conf.api_key["BearerToken"] = ""
        conf.refresh_api_key_hook = self._refresh_token
        self._conf = conf
        self._timeout = timeout
        self._client: ApiClient | None = None

    def _refresh_token(self, conf: Configuration) -> None:
        # Read per request (a few bytes on a tmpfs): a rotated token is used at once.
        conf.api_key["BearerToken"] = "Bearer " + self._token_file.read_text().strip()

    def _api(self) -> ApiClient:
        if self._client is None:  # created on the running loop (it opens an aiohttp session)
            self._client = ApiClient(configuration=self._conf)
        return self._client

    async def get(self, path: str, query: Query = (), *, what: str) -> dict[str, Any]:
        """``GET path?query`` -> the decoded JSON object.

        Raises:
            KubeApiError: no answer, an error status, or an answer that is not a JSON object.
        """
        try:
            doc = await self._api().call_api(
                path, "GET", query_params=list(query), header_params=dict(_ACCEPT),
                auth_settings=_AUTH, response_types_map={200: "object"},
                _return_http_data_only=True, _request_timeout=self._timeout)
        except ApiException as e:
            raise KubeApiError(what, status=e.status or 0, reason=str(e.reason or "")) from None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            raise KubeApiError(what, reason=type(e).__name__) from None
        if not isinstance(doc, dict):
            raise KubeApiError(what, reason="the answer is not a JSON object")
        return doc

    async def watch(self, path: str, query: Query, *, resource_version: str,
                    timeout_seconds: int, what: str) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch from ``resource_version`` (``{"type", "object"}``,
        bookmarks included), until the server ends it after ``timeout_seconds``.

        Raises:
            KubeApiError: the watch could not start, broke, or the server sent an error
                event (``status`` 410: the version is too old; list again). ``status`` 0
                with reason ``not a watch stream``: the server answered something else.
        """
        read_timeout = timeout_seconds + 30  # a silent dead connection ends the watch
        conf_timeout = (self._timeout, float(read_timeout))

        async def request(**kw: Any) -> Any:
            params = [*query, ("watch", "true"), ("allowWatchBookmarks", "true"),
                      ("resourceVersion", kw["resource_version"]),
                      ("timeoutSeconds", kw["timeout_seconds"])]
            resp = await self._api().call_api(
                path, "GET", query_params=params, header_params=dict(_ACCEPT),
                auth_settings=_AUTH, _preload_content=False, _request_timeout=conf_timeout)
            if resp.status != 200:  # (unread error bodies are not parsed as events)
                resp.release()
                raise KubeApiError(what, status=resp.status, reason=str(resp.reason or ""))
            return resp

        stream = Watch(return_type="object")
        try:
            async with stream:
                events = stream.stream(request, resource_version=resource_version,
                                       timeout_seconds=timeout_seconds)
                async for event in events:
                    if not isinstance(event, dict) or not isinstance(event.get("raw_object"),
                                                                      dict):
                        raise KubeApiError(what, reason="not a watch stream")
                    yield {"type": str(event["type"]), "object": event["raw_object"]}
        except ApiException as e:
            raise KubeApiError(what, status=e.status or 0, reason=str(e.reason or "")) from None
        except KubeApiError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise KubeApiError(what, reason=type(e).__name__) from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise KubeApiError(what, reason="not a watch stream") from None
        except Exception as e:
            # Watch raises a bare Exception for a line that is JSON but not an event (a
            # server or proxy that answers a watch with a plain list).
            if type(e) is Exception:
                raise KubeApiError(what, reason="not a watch stream") from None
            raise

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
