"""HTTP layer of the gateway: dependencies and one router module per resource."""
