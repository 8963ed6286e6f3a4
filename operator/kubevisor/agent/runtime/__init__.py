"""The agent's generic runtime, the same for every kind it reconciles: the informer
(list + watch through a server-side selector, stale-event guard) and the work loop
(queue, workers, coalescing, retries, ticks). Pure asyncio: Kubernetes access comes in
through :mod:`kubevisor.agent.kube`, which implements the informer's ``Source``."""
