"""The server side: the builder, the call lifecycle, interceptors for raw servers, servicers."""
