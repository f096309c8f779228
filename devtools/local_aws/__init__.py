"""Embedded local AWS: moto behind hypercorn, as strict as AWS for the limits our writes could reach.

``server`` serves it (and counts, refuses, fails and bills requests), ``limits`` holds AWS's documented
limits, ``faults`` the fault plans, ``billing`` what AWS would bill, ``moto_patches`` what we change in moto.
"""

from devtools.local_aws.faults import FaultPlan
from devtools.local_aws.limits import AwsRequest
from devtools.local_aws.server import LocalAws

__all__ = ["AwsRequest", "FaultPlan", "LocalAws"]
