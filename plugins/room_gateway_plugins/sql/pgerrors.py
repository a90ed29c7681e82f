"""asyncpg's errors that the SQL backend tells apart, in one place (both empty when installed without
PostgreSQL support)."""

from __future__ import annotations

try:
    import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

    #: The connection is gone, besides ``OSError``: SQLSTATE class 08, the server shutting down or
    #: restarting (57P01 to 57P03; not 57014, a cancelled statement), a closed connection, and a protocol
    #: left mid-operation. The last is what a pooled connection the server ended while it was idle can raise
    #: at its next statement, when the server's FATAL error has been read but the socket's close not yet:
    #: "cannot switch to state 15; another operation (2) is in progress" (InternalClientError, about one run
    #: in ten of tests/backends/test_sql.py's pg_terminate_backend test); nothing can run on it again.
    LOST_CONNECTION: tuple[type[BaseException], ...] = (
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.CrashShutdownError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
    )
    #: The store cannot answer now (UNAVAILABLE): a lost connection, any other intervention of the
    #: server's operator (SQLSTATE class 57: a statement cancelled by ``statement_timeout``, a dropped
    #: database), or a transaction the server rolled back to resolve a conflict (class 40: a deadlock, a
    #: serialization failure), which can be retried as it is. Each leaves the connection usable.
    UNAVAILABLE: tuple[type[BaseException], ...] = (
        *LOST_CONNECTION,
        asyncpg.exceptions.OperatorInterventionError,
        asyncpg.exceptions.TransactionRollbackError,
    )
except ImportError:  # installed without PostgreSQL support
    LOST_CONNECTION = UNAVAILABLE = ()
