"""gchat: a cluster chat server speaking the protocol of the C++ muduo chat server."""

__version__ = "0.1.0"
