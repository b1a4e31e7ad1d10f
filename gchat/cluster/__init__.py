"""The cluster side of a node: who is online where (`presence`), how a
message reaches a user held by another node (`bus`), and their Redis
implementations. A node that is alone uses the local implementations, the
embedded default; docs/architecture.md says what each module may import.
"""
