"""`python -m cloud_service.api.health [--tls-ca CA] HOST:PORT`: exit 0 when the gRPC health service says SERVING.

For container health checks; the health service needs no device token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def check(target: str, tls_ca: Path | None = None, timeout_s: float = 3.0) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_ca:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(tls_ca.read_bytes()))
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def main(argv: list[str] | None = None) -> int:
    import grpc

    ap = argparse.ArgumentParser(prog="cloud_service.api.health", description=__doc__)
    ap.add_argument("target", help="HOST:PORT")
    ap.add_argument("--tls-ca", type=Path)
    ap.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args(argv)
    try:
        status = check(args.target, args.tls_ca, args.timeout)
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
