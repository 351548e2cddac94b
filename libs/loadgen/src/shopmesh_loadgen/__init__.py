"""shopmesh's load generator: Locust shoppers on the public HTTP/JSON API (`locustfile.py`), to keep traffic
flowing for the dashboards, traces, SLO alerts and canary analysis (`make load`; on Kubernetes the
loadgenerator chart)."""

from pathlib import Path

# Locust loads it by path (`locust -f`): importing it here would import Locust, which monkey-patches the process.
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
DEFAULT_HOST = "http://127.0.0.1:8080"

__all__ = ["DEFAULT_HOST", "LOCUSTFILE"]
