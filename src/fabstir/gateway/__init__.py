"""``fabstir gateway``: the marketplace behind the OpenAI API (chat completions, models), on 127.0.0.1.

See :mod:`fabstir.gateway.service` for how requests become marketplace sessions, :mod:`fabstir.gateway.wire`
for the OpenAI wire format and :mod:`fabstir.gateway.app` for the routes.
"""

from fabstir.gateway.server import GatewayServer, serve_gateway
from fabstir.gateway.service import Gateway
from fabstir.gateway.wire import GatewayError

__all__ = ["Gateway", "GatewayError", "GatewayServer", "serve_gateway"]
