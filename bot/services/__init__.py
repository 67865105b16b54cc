"""The domain: catalogue, orders, wallet and access, used by handlers and the poller alike."""
