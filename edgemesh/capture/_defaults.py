"""The capture options' defaults, apart from the rules (``_rules``) and iptables
(``_iptables``): an edge without --capture parses its options with these alone and never
loads those modules (0.1 MiB of an idle edge's RssAnon)."""

import ipaddress

DEFAULT_SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
"""Kubernetes' default service CIDR (kubeadm)."""
DEFAULT_VIRTUAL_CIDR = ipaddress.IPv4Network("240.240.0.0/16")
"""Where headless services get their virtual IPs: reserved class E space, which no real
network uses (Istio's DNS proxy allocates from the same range)."""
DEFAULT_TRANSPARENT_PORT = 15001
DEFAULT_TRANSPARENT = "tcp:15001:interface=127.0.0.1"
"""The transparent listener with --capture and no --transparent."""
BACKENDS = ("iptables", "iptables-nft", "iptables-legacy")
"""The iptables commands --iptables may name."""
