"""The TLS options of both twistd plugins: where the CA, certificate and key are, or
``--insecure`` for plaintext links.  Neither given is a usage error, so that nobody runs
plaintext links by accident."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.python import usage

from ._config import TLSConfig, TLSFileError


def _number_of_seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number of seconds") from None


def _timeout(value: str) -> float:
    number = _number_of_seconds(value)
    if not 0 < number <= 3600:
        raise ValueError("must be more than 0 and at most 3600 seconds")
    return number


def _interval(value: str) -> float:
    number = _number_of_seconds(value)
    if not 0 <= number <= 86400:
        raise ValueError("must be between 0 (no periodic check) and 86400 seconds")
    return number


LINK_TLS_IO = ("memory", "socket")


def _link_io(value: str) -> str:
    if value not in LINK_TLS_IO:
        raise ValueError(f"must be {' or '.join(LINK_TLS_IO)}, not {value!r}")
    return value


class TLSOptions(usage.Options):
    """The ``--tls-dir`` / ``--ca --cert --key`` / ``--insecure`` options both plugins share."""

    optFlags: ClassVar[list[Any]] = [
        ["insecure", None,
         "Plaintext links between nodes, no TLS (tests on one machine only; logs a warning)."],
    ]
    optParameters: ClassVar[list[Any]] = [
        ["ca", None, None, "CA certificate(s) that sign node certificates (PEM)."],
        ["cert", None, None, "This node's certificate (PEM), from `edgemesh certs issue`."],
        ["key", None, None, "This node's private key (PEM)."],
        ["tls-dir", None, None,
         ("Directory with ca.pem, NODE.pem and NODE.key (as `edgemesh certs` writes them), "
          "instead of --ca/--cert/--key.")],
        ["tls-handshake-timeout", None, 10.0,
         "Seconds a peer has to complete the TLS handshake.", _timeout],
        ["tls-reload-interval", None, 60.0,
         "Seconds between checks of the TLS files for changes (0: only on SIGHUP).", _interval],
        ["link-tls-io", None, "memory",
         ("How a link's TLS reaches its TCP socket: memory (Twisted's TLS over memory BIOs) "
          "or socket (OpenSSL reads and writes the socket itself; a prototype, issue 15)."),
         _link_io],
    ]

    def tls_config(self, node: str, role: str) -> TLSConfig | None:
        """The checked TLS configuration for ``node`` (None with --insecure); raises
        UsageError naming the option and the problem."""
        files = {name: self[name] for name in ("ca", "cert", "key")}
        directory = self["tls-dir"]
        if self["insecure"]:
            if directory or any(files.values()):
                raise usage.UsageError(
                    "--insecure contradicts --ca/--cert/--key/--tls-dir: choose one")
            return None
        settings: dict[str, Any] = {
            "handshake_timeout": self["tls-handshake-timeout"],
            "reload_interval": self["tls-reload-interval"],
            "reload_on_sighup": True,
            "link_io": self["link-tls-io"],
        }
        if directory:
            if any(files.values()):
                raise usage.UsageError("give either --tls-dir or --ca/--cert/--key, not both")
            config = TLSConfig.from_directory(directory, node, **settings)
        elif all(files.values()):
            config = TLSConfig(files["ca"], files["cert"], files["key"], **settings)
        elif any(files.values()):
            missing = ", ".join(f"--{name}" for name, value in files.items() if not value)
            raise usage.UsageError(f"--ca, --cert and --key go together: {missing} missing")
        else:
            raise usage.UsageError(
                "links between nodes use mutual TLS: give --ca FILE --cert FILE --key FILE "
                "(or --tls-dir DIR; make them with `edgemesh certs init` and "
                "`edgemesh certs issue`), "
                "or --insecure for plaintext links (tests only)"
            )
        from ._material import check_identity, load_material  # TLS nodes only (see _config)

        try:
            check_identity(load_material(config), config, node, role)
        except TLSFileError as error:
            raise usage.UsageError(str(error)) from None
        return config
