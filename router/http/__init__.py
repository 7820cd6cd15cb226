"""The HTTP face of the router: the aiohttp app, its middleware, handlers and operator API.
Handlers only read from the composition root (`router.root.Router`)."""
