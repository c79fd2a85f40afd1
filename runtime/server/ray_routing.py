"""Prefix-aware routing for the model replicas: Ray's PrefixCacheAffinityRouter (a prefix tree of
the prompts routed to each replica; the replica holding the longest match gets the request while
the load is balanced), reading g4rt's `ForwardedRequest.routing_text`, so the next turn of a
conversation lands where its prompt cache is.

Imports Ray: only the Ray path loads this module. Ray ships the router in `ray.serve.llm`, whose
package import needs Ray's LLM extras (pyarrow, ...); the class itself does not, so it is taken
from its defining module when the public path cannot load."""

from __future__ import annotations

from typing import Optional

import ray

try:
    from ray.serve.llm.request_router import PrefixCacheAffinityRouter
except ImportError:       # ray[serve] without ray[llm]: the same class, from where it is defined
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
        PrefixCacheAffinityRouter)
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import PrefixTreeActor
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE


class G4rtPrefixRouter(PrefixCacheAffinityRouter):
    def initialize_state(self, **kwargs):
        if kwargs.get("tree_actor") is None:
            # Ray's router makes its tree actor with the default CPU request, which cannot be
            # placed while the replicas hold every CPU (the usual case for CPU inference): routing
            # would then wait forever. The same detached, per-deployment actor, asking no CPU.
            dep = self._deployment_id
            namespace = "::".join([SERVE_NAMESPACE] + ([dep.app_name] if dep and dep.app_name else [])
                                  + ([dep.name] if dep else []))
            kwargs["tree_actor"] = PrefixTreeActor.options(name="G4rtPrefixTree", namespace=namespace,
                                                           get_if_exists=True, lifetime="detached",
                                                           num_cpus=0).remote()
            controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            ray.get(controller._register_shutdown_cleanup_actor.remote(kwargs["tree_actor"]))  # serve.shutdown kills it
        super().initialize_state(**kwargs)

    def _extract_text_from_request(self, pending_request) -> Optional[str]:
        # None (no prompt: /v1/models, /health, ...) makes the router fall back to power of two
        for arg in pending_request.args:
            text = getattr(arg, "routing_text", None)
            if text:
                return text
        return None
