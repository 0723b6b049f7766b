"""The request path: routes for /v1, /maas, /api, /admin and the steps they chain."""
