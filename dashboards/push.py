"""Create or update the datasource and the dashboards in a Grafana, through grafana-client.

grafana-client is the maintained successor of grafana-api (which stopped at Grafana 8):
it speaks the current HTTP API, takes a service-account token, and covers datasources
and dashboards with the same calls the provisioning files describe.
"""

from __future__ import annotations

import json
from pathlib import Path

from dashboards.build import DATASOURCE_UID, OUT


class PushError(RuntimeError):
    """A push that could not be done, said in one line (what failed and what to do)."""


def check_grafana(url: str, timeout: float = 5.0) -> None:
    """One request to ``/api/health`` before anything is pushed: a URL that is down or is not a Grafana is
    named as such (grafana-client would report a raw connection error or "404 page not found")."""
    import requests

    try:
        resp = requests.get(f"{url.rstrip('/')}/api/health", timeout=timeout)
    except requests.RequestException as exc:
        raise PushError(f"cannot reach {url} ({type(exc).__name__}): is Grafana running there?") from None
    try:
        healthy = resp.status_code == 200 and "database" in resp.json()
    except ValueError:
        healthy = False
    if not healthy:
        raise PushError(f"{url} does not look like Grafana: /api/health answered HTTP {resp.status_code}")


def datasource_payload(prometheus_url: str) -> dict:
    return {"uid": DATASOURCE_UID, "name": "fracture-prometheus", "type": "prometheus", "access": "proxy",
            "url": prometheus_url, "isDefault": False, "jsonData": {"timeInterval": "5s"}}


def push(url: str, token: str, prometheus_url: str = "http://127.0.0.1:9090", folder: Path = OUT,
         timeout: float = 10.0) -> dict:
    """Upsert the datasource (by its fixed uid) and every dashboard JSON in ``folder``."""
    if not token:
        raise PushError("no token: pass --token or set GRAFANA_TOKEN (a Grafana service-account token with the "
                        "Editor role)")
    try:
        from grafana_client import GrafanaApi
        from grafana_client.client import GrafanaClientError
    except ImportError:
        raise PushError("grafana-client is not installed: pip install '.[grafana]'") from None

    check_grafana(url, timeout)
    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    try:
        return _push(api, prometheus_url, folder)
    except GrafanaClientError as exc:
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            raise PushError(f"Grafana at {url} refused the token (HTTP {status}): check --token or GRAFANA_TOKEN "
                            "(a service-account token with the Editor role)") from None
        raise PushError(f"Grafana at {url} refused the push (HTTP {status}): {exc}") from None


def _push(api, prometheus_url: str, folder: Path) -> dict:
    """The upserts themselves (grafana-client's errors are turned into PushError by ``push``)."""
    from grafana_client.client import GrafanaClientError

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
