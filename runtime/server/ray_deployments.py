"""The Ray Serve deployments of `g4rt serve --ray`: the model replicas (each loads the model once
and runs the same g4rt app as `g4rt serve`), the ingress in front of them (ray_ingress) and the
board the replicas post their metrics to (ray_metrics). Built into one application by
ray_serve.build_app. Imports Ray: only the Ray path loads this module."""

from __future__ import annotations

import asyncio
import logging

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

from .ray_forward import ForwardedRequest, play
from .ray_ingress import IngressApp, Unavailable
from .ray_metrics import POST_EVERY_S, MetricsBoard

log = logging.getLogger("g4rt.server")


@serve.deployment(name="G4rtModel")
class G4rtModel:
    """One replica: the model, its scheduler and slots, and the g4rt app over them."""

    async def __init__(self, settings, board):
        from .app import create_app
        from .metrics import ServerMetrics
        from .state import ServerState

        self.state = ServerState(settings.server_config(), ServerMetrics(settings.parallel))
        # loaded before the constructor returns: Ray counts the replica as up (and routes to it)
        # only then; in a thread, so the replica's event loop stays free meanwhile
        self.state.attach(await asyncio.to_thread(settings.load))
        self.app = create_app(self.state)
        self.replica = serve.get_replica_context().replica_id.to_full_id_str()
        self.board = board
        self._poster = asyncio.get_running_loop().create_task(self._post_metrics())
        log.warning("g4rt serve (ray): %s loaded %s", self.replica, settings.model)

    async def forward(self, request: ForwardedRequest):
        async for message in play(self.app, request, self.replica):
            yield message

    def check_health(self):
        # Ray restarts a replica whose check fails: the inference thread must be alive
        thread = getattr(self.state.scheduler, "_thread", None)
        if thread is None or not thread.is_alive():
            raise RuntimeError("the g4rt inference thread has stopped")

    async def _post_metrics(self):
        while True:
            try:
                await self.board.put.remote(self.replica, self.state.metrics.render().decode())
            except Exception as e:          # the board restarting: the next post fills it again
                log.debug("g4rt serve (ray): metrics post failed: %s", e)
            await asyncio.sleep(POST_EVERY_S)

    def __del__(self):
        self.state.shutdown("the replica is shutting down")


@serve.deployment(name="G4rtMetrics", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=1024)
class G4rtMetrics:
    def __init__(self):
        self.board = MetricsBoard()

    def put(self, replica: str, page: str) -> None:
        self.board.put(replica, page)

    def collect(self) -> dict:
        return self.board.collect()


@serve.deployment(name="G4rtIngress")
@serve.ingress()
class G4rtIngress:
    def __init__(self, model, board, settings):
        self.model, self.board, self.settings = model, board, settings

    def __serve_build_asgi_app__(self):
        return IngressApp(self._forward, self._pages, max_body=self.settings.max_body,
                          api_key=self.settings.api_key)

    async def _forward(self, request: ForwardedRequest):
        stream = self.model.options(stream=True).forward.remote(request)
        done = False
        try:
            async for message in stream:
                yield message
            done = True
        except BackPressureError:
            raise Unavailable("every replica is busy and the queue is full (--queue); retry later",
                              "server_busy_error") from None
        except (RayActorError, ActorUnavailableError, ReplicaUnavailableError) as e:
            # the replica died under the request (Ray starts another); another try lands elsewhere
            log.warning("g4rt serve (ray): a replica went away under a request: %s", type(e).__name__)
            raise Unavailable("the replica serving this request went away; retry") from None
        finally:
            if not done:
                stream.cancel()             # the client left: the replica ends the generation

    async def _pages(self) -> dict:
        return await self.board.collect.remote()

