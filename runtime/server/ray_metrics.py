"""`GET /metrics` of a Ray Serve deployment: every replica has its own counters (its own
`ServerMetrics`), so the ingress answers with all of them on one page, each sample labelled with
the replica it came from (`sum without (replica) (...)` gives the deployment's totals).

Replicas post their page to a board (a small deployment) every few seconds; the page is
therefore up to that old, and a replica that stopped posting (dead, scaled down) drops out after
`STALE_S`. No Ray import here: the deployments in ray_deployments wrap these."""

from __future__ import annotations

import time
from typing import Optional

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

#: how often a replica posts its page, and when a page that was not renewed is dropped
POST_EVERY_S = 2.0
STALE_S = 10.0


class MetricsBoard:
    """The last page each replica posted, and when."""

    def __init__(self, stale_s: float = STALE_S, clock=time.monotonic):
        self.stale_s, self.clock = stale_s, clock
        self.pages: dict[str, tuple[float, str]] = {}

    def put(self, replica: str, page: str) -> None:
        self.pages[replica] = (self.clock(), page)

    def collect(self) -> dict[str, str]:
        now = self.clock()
        self.pages = {r: (t, p) for r, (t, p) in self.pages.items() if now - t <= self.stale_s}
        return {r: p for r, (_, p) in sorted(self.pages.items())}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def merge_pages(pages: dict[str, str], label: str = "replica") -> str:
    """One Prometheus text page from several replicas' pages: each family's HELP and TYPE once,
    its samples from every replica with `label="<replica>"` added, and `g4rt_replicas` (how many
    replicas the page covers)."""
    families: dict[str, tuple[str, str, list]] = {}
    for replica, page in pages.items():
        for fam in text_string_to_metric_families(page):
            entry = families.setdefault(fam.name, (fam.type, fam.documentation, []))
            for s in fam.samples:
                entry[2].append((s.name, {label: replica, **s.labels}, s.value))
    lines = ["# HELP g4rt_replicas Replicas whose metrics this page holds",
             "# TYPE g4rt_replicas gauge", f"g4rt_replicas {len(pages)}"]
    for name, (kind, doc, samples) in families.items():
        lines.append(f"# HELP {name} {doc.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}")
        lines.append(f"# TYPE {name} {kind}")
        lines += [f"{sname}{_labels(labels)} {floatToGoString(value)}" for sname, labels, value in samples]
    return "\n".join(lines) + "\n"


def sample_sum(page: str, name: str, labels: Optional[dict] = None) -> float:
    """The sum of a sample over every replica on a merged page (the samples whose labels include
    `labels`); for tests and scripts."""
    total = 0.0
    for fam in text_string_to_metric_families(page):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total += s.value
    return total
