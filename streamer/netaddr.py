"""Addresses a server named by someone else must not lead to: loopback, link-local (which
holds the cloud metadata services), unspecified, multicast, reserved, and the metadata
services' own addresses. The node cache refuses them for a requester's servers
(:mod:`sidecar.endpoints`) and for the redirects such a server answers with
(:class:`streamer.backends.http.RedirectGuard`)."""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset({
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
    ipaddress.ip_address("169.254.170.2"),  # ECS task credentials
    ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
})


def unmap(address: Address) -> Address:
    """``::ffff:169.254.169.254`` is 169.254.169.254."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse(text: str) -> Address:
    """An address as a resolver prints it (an IPv6 zone id dropped), IPv4-mapped unmapped.

    Raises:
        ValueError: not an IP address.
    """
    return unmap(ipaddress.ip_address(text.split("%", 1)[0]))


def special(address: Address) -> bool:
    """A metadata, loopback, link-local, unspecified, multicast or reserved address."""
    address = unmap(address)
    return (address in METADATA_ADDRESSES or address.is_loopback or address.is_link_local
            or address.is_unspecified or address.is_multicast or address.is_reserved)
