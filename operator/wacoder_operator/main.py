"""`python -m wacoder_operator`: kopf run against the current kubeconfig (in a pod, its service
account), standalone (one replica: no peering objects needed), all namespaces or WATCH_NAMESPACE
(comma-separated; then without kopf's cluster scanning: Roles in those namespaces suffice).
LIVENESS_ENDPOINT (e.g. http://0.0.0.0:8080/healthz) serves kopf's probe."""

from __future__ import annotations

import asyncio
import logging
import os

import kopf

from wacoder_operator.handlers import watch_namespaces  # importing it registers the handlers


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(message)s"
    )
    namespaces = watch_namespaces()
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=os.environ.get("LIVENESS_ENDPOINT") or None,
        )
    )


if __name__ == "__main__":
    main()
