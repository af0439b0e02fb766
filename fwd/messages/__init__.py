"""Every message the actors exchange (frozen dataclasses), one import site."""

from fwd.messages.cluster import *  # noqa: F403
from fwd.messages.datapath import *  # noqa: F403
