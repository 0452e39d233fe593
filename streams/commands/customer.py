"""Show one customer's snapshot from the running worker (HTTP GET).

  loyalty customer SHOP CUSTOMER [--as-of RFC3339] [--url http://127.0.0.1:6066]

Sends LOYALTY_API_TOKEN as a bearer token when it is set. Exit 0 and the JSON
snapshot on stdout; exit 1 with the server's error for 4xx/5xx; exit 2 when
no worker answers.
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the customer options."""
    parser.add_argument("shop")
    parser.add_argument("customer")
    parser.add_argument("--as-of", default=None, help="RFC 3339 instant, e.g. 2026-01-01T00:00:00Z")
    parser.add_argument("--url", default=None,
                        help="worker base URL (default http://LOYALTY_WEB_HOST:LOYALTY_WEB_PORT)")


def run(args: argparse.Namespace) -> int:
    """GET the snapshot and print it."""
    import urllib.error
    import urllib.request
    from urllib.parse import quote, urlencode

    from schemas import codec
    from streams.settings import get_settings

    settings = get_settings()
    host = "127.0.0.1" if settings.web_host in ("0.0.0.0", "::") else settings.web_host
    base = (args.url or f"http://{host}:{settings.web_port}").rstrip("/")
    url = f"{base}/customers/{quote(args.shop, safe='')}/{quote(args.customer, safe='')}"
    if args.as_of:
        url += "?" + urlencode({"as_of": args.as_of})
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        print(f"loyalty customer: HTTP {exc.code}: {exc.read().decode(errors='replace')}",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"loyalty customer: no worker answers at {base}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(codec.dumps_pretty(codec.loads(body)).decode())
    return 0
