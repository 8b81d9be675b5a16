"""Create or update the datasource and the dashboards in a Grafana, through grafana-client.

grafana-client is the maintained successor of grafana-api (which stopped at Grafana 8):
it speaks the current HTTP API, takes a service-account token, and covers datasources
and dashboards with the same calls the provisioning files describe.
"""

from __future__ import annotations

import json
from pathlib import Path

from dashboards.build import DATASOURCE_UID, OUT


def datasource_payload(prometheus_url: str) -> dict:
    return {"uid": DATASOURCE_UID, "name": "fracture-prometheus", "type": "prometheus", "access": "proxy",
            "url": prometheus_url, "isDefault": False, "jsonData": {"timeInterval": "5s"}}


def push(url: str, token: str, prometheus_url: str = "http://127.0.0.1:9090", folder: Path = OUT,
         timeout: float = 10.0) -> dict:
    """Upsert the datasource (by its fixed uid) and every dashboard JSON in ``folder``."""
    try:
        from grafana_client import GrafanaApi
        from grafana_client.client import GrafanaClientError
    except ImportError as exc:
        raise RuntimeError("grafana-client is not installed: pip install '.[grafana]'") from exc

    api = GrafanaApi.from_url(url, credential=token or None, timeout=timeout)
    payload = datasource_payload(prometheus_url)
    try:
        api.datasource.get_datasource_by_uid(DATASOURCE_UID)
        api.datasource.update_datasource_by_uid(DATASOURCE_UID, payload)
        datasource = "updated"
    except GrafanaClientError as exc:
        if getattr(exc, "status_code", None) != 404:
            raise
        api.datasource.create_datasource(payload)
        datasource = "created"
    pushed = []
    for path in sorted(Path(folder).glob("*.json")):
        dashboard = json.loads(path.read_text())
        api.dashboard.update_dashboard({"dashboard": dashboard, "overwrite": True,
                                        "message": "pushed by python -m dashboards push"})
        pushed.append(dashboard["uid"])
    return {"datasource": datasource, "dashboards": pushed}
