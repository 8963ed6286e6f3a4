"""The rebalancer (RebalancePolicy): observe, plan with placement/rebalancing, act."""
