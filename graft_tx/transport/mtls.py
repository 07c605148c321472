"""C{mtls:} server endpoints: TLS that requires a client certificate.

Twisted's C{ssl:} endpoint string cannot ask for client certificates, so
TcpRpc parses C{mtls:PORT:privateKey=KEY:certKey=CERT:caCert=CA[:interface=IP]}
itself: peers must present a certificate signed by CA.
"""

from __future__ import annotations

from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate
from twisted.python.filepath import FilePath


def mutual_tls_server(reactor: object, description: str) -> IStreamServerEndpoint:
    """Parse the part of an C{mtls:} string after the prefix."""
    port, *rest = description.split(":")
    fields = dict(part.split("=", 1) for part in rest if "=" in part)
    unknown = set(fields) - {"privateKey", "certKey", "caCert", "interface", "backlog"}
    if unknown or len(fields) != len(rest):
        raise ValueError(
            "mtls endpoints take PORT:privateKey=KEY:certKey=CERT:caCert=CA[:interface=IP]"
        )
    if "privateKey" not in fields or "caCert" not in fields:
        raise ValueError("mtls endpoints need privateKey= and caCert=")
    key = FilePath(fields["privateKey"]).getContent()
    cert = FilePath(fields.get("certKey", fields["privateKey"])).getContent()
    ca = Certificate.loadPEM(FilePath(fields["caCert"]).getContent())
    mine = PrivateCertificate.loadPEM(cert + b"\n" + key)  # type: ignore[no-untyped-call]
    options = CertificateOptions(
        privateKey=mine.privateKey.original,
        certificate=mine.original,
        verify=True,
        caCerts=[ca.original],
        requireCertificate=True,
    )
    return SSL4ServerEndpoint(  # type: ignore[no-untyped-call]
        reactor,
        int(port),
        options,
        backlog=int(fields.get("backlog", 50)),
        interface=fields.get("interface", ""),
    )
