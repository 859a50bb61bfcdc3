"""``kubestep server``: Kubestep's HTTP API (``/api/v1/…``, JSON and Server-Sent Events; docs/api.md).

The server acts as its caller: every API request carries ``Authorization: Bearer <Kubernetes token>``
and every apiserver request made for it is made with that token (``kubestep._kube.Kube.for_token``),
so the apiserver authenticates and authorizes each one as it would the caller's own ``kubectl``. The
server's own credentials serve for finding the apiserver (its URL and CA) and, with ``--cache``, for
one shared read-only watch of the runs (``cache``), answered from only after the apiserver has
authorized the caller (``auth.Access``).

A runtime of its own beside the operator and the worker, found by the CLI through the entry point
``kubestep.commands`` (``cli.add_parser``). It uses only the public SDK and the kube layer
(``.importlinter``). The modules, one job each:

* ``cli``: the ``kubestep server`` command; imports nothing heavy until it runs;
* ``settings``: ``ServerSettings``, the server's knobs, built once;
* ``app``: the aiohttp ``Application``: routes, middlewares (errors, auth, CSRF), security headers;
* ``routes``: one handler per route, on ``KubestepClient``;
* ``bulk``: cancelling many runs at once, each with the caller's token;
* ``cache``: the shared, watch-fed cache of runs the list and the namespace stream are answered from;
* ``selectors``: label selectors parsed and matched as the apiserver does, for the cache (pure);
* ``streams``: the Server-Sent Events streams of a run and of a namespace;
* ``sse``: the wire format of a Server-Sent Event (pure);
* ``auth``: the caller's bearer token, the per-token client cache, access reviews (kept briefly);
* ``errors``: ``Problem`` (an HTTP error with a JSON body) and the SDK's errors mapped to HTTP (pure);
* ``models``: the JSON bodies, requests (pydantic, strict) and answers.

Nothing is imported here, so that loading the CLI's commands stays cheap.
"""
