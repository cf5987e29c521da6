"""The client side: channels, the call lifecycle, interceptors for raw stubs, modules, models."""
