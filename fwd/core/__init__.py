"""The pure core: the kernel ABI mirror, netlink and ring-buffer record decoding.

Nothing here does I/O; fwd.policy (the policy model and compiler) is its sibling.
"""
