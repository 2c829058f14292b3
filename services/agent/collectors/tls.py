"""The client TLS context the SQL collectors hand their drivers (asyncpg, aiomysql)."""

from __future__ import annotations

import ssl

from dbintel.common.config import TLSSettings


class _ServerNameContext(ssl.SSLContext):
    """Presents `server_name` (SNI and certificate check) instead of the dialled host."""

    server_name: str | None = None

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        return super().wrap_bio(incoming, outgoing, server_side, self.server_name or server_hostname, session)


def client_ssl_context(tls: TLSSettings) -> ssl.SSLContext | None:
    """An SSL context for the database's TLS settings; None when TLS is off."""
    if not tls.enabled:
        return None
    context = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
    context.server_name = tls.server_name
    if tls.ca_file:
        context.load_verify_locations(cafile=tls.ca_file)
    else:
        context.load_default_certs()
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
