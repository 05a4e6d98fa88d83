"""Platform code the features stand on: the database (pool, transactions, migrations, where it
is, the embedded Postgres), the shared HTTP client's transport, logging and the ASGI
middleware. Nothing here knows a feature or a provider."""
