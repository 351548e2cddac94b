"""Idempotency keys with Stripe's semantics, for any unary RPC whose effect lives in the service's database.

- same key + same request   → the stored outcome is replayed (response or error), the operation does not run;
- same key + other request  → INVALID_ARGUMENT, reason IDEMPOTENCY_KEY_REUSED, once the first's outcome is stored;
- same key while the first request still runs → ABORTED, reason IDEMPOTENCY_KEY_IN_USE, whatever the request;
- keys are scoped per caller and method and kept at least `retention` (default 48 h);
- a request's own rules (`check`) are applied only when there is no outcome to replay, before the key is
  claimed and without the write lock: a retry of a request a release with looser rules accepted replays its
  answer, a request the rules refuse takes no key, and its refusal never waits for another's write.

The operation runs in the same database transaction that stores its outcome, so the effect and the
record commit together or not at all. A claim carries a lease: when the process dies mid-operation,
nothing was committed, and a retry after the lease takes the key over and runs the operation again.
A lease is only a guess that the first attempt died, so each claim carries a token and the operation's
transaction first locks the claim holding its token: an attempt that outlives its lease either commits
first (a retry taking over waits for the lock and replays the outcome) or finds itself taken over and
rolls back; storing the outcome and releasing the key touch only the claim holding their token, and
what an attempt writes after its operation's transaction (an error's outcome, the release) leaves a claim
that a retry taking it over has locked rather than wait for the retry.
Transient failures (UNAVAILABLE, ABORTED, RESOURCE_EXHAUSTED) and unexpected exceptions store nothing,
so a retry tries again; every other domain error is stored and replayed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.message import Message
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from shopmesh_chassis import call_context, errors
from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.config import IdempotencySettings
from shopmesh_chassis.contract_limits import required_violation
from shopmesh_chassis.db import Database, DbConnection, as_utc
from shopmesh_chassis.db_errors import cause_line, database_unavailable
from shopmesh_chassis.grpc_errors import status_code_for, to_rpc_status
from shopmesh_chassis.periodic import delete_in_batches
from shopmesh_chassis.tables import IDEMPOTENCY_SCOPE_LENGTH
from shopmesh_chassis.tables import idempotency_records as records

log = logging.getLogger("shopmesh.idempotency")

ResponseT = TypeVar("ResponseT", bound=Message)
Operation = Callable[[DbConnection], Awaitable[ResponseT]]

MAX_KEY_LENGTH = 255
# A key as the contract states it (common/v1), in the answer to one that breaks it.
KEY_RULE = "1 to 255 printable ASCII characters, no comma"
IN_PROGRESS = "in_progress"
COMPLETED = "completed"

# Built once (see db.py on the cost of building statements); every keyed request runs them.
_THIS_KEY = (records.c.scope == bindparam("b_scope"), records.c.key == bindparam("b_key"))
_MY_CLAIM = (*_THIS_KEY, records.c.state == IN_PROGRESS, records.c.claim_token == bindparam("b_token"))
_FIND = select(records).where(*_THIS_KEY)
_FIND_FOR_UPDATE = _FIND.with_for_update()
# SQLite renders no FOR UPDATE: there the writer lock the transaction holds serialises it already.
_HOLD_MY_CLAIM = select(records.c.key).where(*_MY_CLAIM).with_for_update()
# A claim locked by another transaction is past its lease and being taken over (or is already another's, its
# operation running): releasing it is not ours to wait for. (A request for the same key that found no claim in its
# unlocked look also locks it, for the moment it takes to answer IDEMPOTENCY_KEY_IN_USE: a release meeting that
# leaves the claim to its lease, and a retry until then is answered IN_USE too. Slower, never wrong.)
_MY_UNLOCKED_CLAIM = select(records.c.key).where(*_MY_CLAIM).with_for_update(skip_locked=True)
_INSERT = insert(records)
_UPDATE = update(records).where(*_THIS_KEY)
_UPDATE_MY_CLAIM = update(records).where(*_MY_CLAIM)
_DELETE = delete(records).where(*_THIS_KEY)
_DELETE_MY_CLAIM = delete(records).where(*_MY_CLAIM)
_SCOPES_OF_KEY = select(records.c.scope).where(
    records.c.scope.in_(bindparam("b_scopes", expanding=True)), records.c.key == bindparam("b_key")
)


def _no_check() -> None:
    pass


def validate_key(key: str | None) -> str:
    """The request's idempotency key, or INVALID_ARGUMENT saying why it is unusable."""
    if not key:
        raise errors.InvalidArgument(
            "this method needs an idempotency-key header",
            [required_violation("idempotency-key")],
            reason="IDEMPOTENCY_KEY_MISSING",
        )
    # No comma: HTTP joins a header sent twice into one, comma-separated, so a proxy merging two keys (which
    # are refused) would otherwise turn them into one key that is accepted.
    if len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable() or "," in key:
        raise key_invalid()
    return key


def key_invalid(
    message: str = f"the idempotency key must be {KEY_RULE}",
) -> errors.InvalidArgument:
    """The key sent cannot be used (IDEMPOTENCY_KEY_INVALID, INVALID_FORMAT on the header); `message` may say
    more about this key, the violation stays the contract's."""
    return errors.InvalidArgument(
        message,
        [errors.FieldViolation("idempotency-key", KEY_RULE, "INVALID_FORMAT")],
        reason="IDEMPOTENCY_KEY_INVALID",
    )


def key_reused(metadata: Mapping[str, str] | None = None) -> errors.InvalidArgument:
    """The key was used with a different request (a client bug: a new request needs a new key)."""
    return errors.InvalidArgument(
        "this idempotency key was used with a different request",
        [errors.FieldViolation("idempotency-key", "already used with a different request", "ALREADY_USED")],
        reason="IDEMPOTENCY_KEY_REUSED",
        metadata=metadata,
    )


def scope_for(method: str) -> str:
    """Keys are scoped per caller (service and end user, from the inbound call) and per method.

    A scope wider than its column (neither x-caller nor x-user-id is bounded) is stored as its SHA-256:
    PostgreSQL refused the row (the call failed INTERNAL) where SQLite kept it. Only a scope that does not
    fit is hashed: the records of scopes that do, written by earlier releases, are still found by a retry
    (hashing all would run a retry after the upgrade a second time). The digest has no '|', so it equals
    no scope written out. The scope is only ever compared, never listed or shown (a takeover's log line)."""
    scope = _written_out_scope(method)
    if len(scope) <= IDEMPOTENCY_SCOPE_LENGTH:
        return scope
    return "sha256:" + hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()


def _written_out_scope(method: str) -> str:
    inbound = call_context.current()
    caller = (inbound.caller if inbound else None) or "-"
    user = call_context.acting_for() or "-"
    return f"{caller}|{user}|{method}"


class RequestFingerprint:
    """HMAC-SHA256 of a request's deterministic encoding: equal for a retry, different for another request.

    Keyed because requests carry card numbers and CVVs: a plain hash stored beside them would let anyone
    holding a database dump confirm guesses (a card number has few unknown digits)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("a fingerprint key needs at least 32 bytes")
        self._key = key

    def __call__(self, request: Message) -> str:
        return hmac.new(self._key, request.SerializeToString(deterministic=True), hashlib.sha256).hexdigest()


# Local SQLite only: `<DATA_DIR>/<service>.fingerprint-key`, staged as `.fingerprint-key-<random>` beside it.
FINGERPRINT_KEY_SUFFIX = "fingerprint-key"
FINGERPRINT_STAGING_PREFIX = f".{FINGERPRINT_KEY_SUFFIX}-"


def fingerprint_key(settings: IdempotencySettings) -> bytes:
    """IDEMPOTENCY_FINGERPRINT_KEY, or (local SQLite only) a key generated once into DATA_DIR and reused,
    so that replays still match after a restart."""
    if settings.idempotency_fingerprint_key is not None:
        return settings.idempotency_fingerprint_key.get_secret_value().encode()
    path = os.path.join(settings.data_dir, f"{settings.service_name}.{FINGERPRINT_KEY_SUFFIX}")
    if not os.path.exists(path):
        os.makedirs(settings.data_dir, exist_ok=True)
        # Written aside, then linked into place: a process starting at the same moment either wins the
        # link or reads the winner's whole key, never a half-written one.
        descriptor, staged = tempfile.mkstemp(dir=settings.data_dir, prefix=FINGERPRINT_STAGING_PREFIX)
        try:
            with os.fdopen(descriptor, "w", encoding="ascii") as out:
                out.write(secrets.token_hex(32))
            with contextlib.suppress(FileExistsError):
                os.link(staged, path)
        finally:
            os.unlink(staged)
    with open(path, encoding="ascii") as stored:
        return stored.read().strip().encode()


# The RetryInfo of IDEMPOTENCY_KEY_IN_USE. The first request under the key is still running: most answer within
# a few hundred milliseconds, so half a second on the retry usually finds the stored outcome to replay, without
# the client polling the key every few milliseconds (each poll a read of the idempotency store) meanwhile.
IN_USE_RETRY_AFTER_SECONDS = 0.5


def _in_use() -> errors.Aborted:
    return errors.Aborted(
        "a request with this idempotency key is still in progress; retry shortly",
        reason="IDEMPOTENCY_KEY_IN_USE",
        retry_after_seconds=IN_USE_RETRY_AFTER_SECONDS,
    )


class IdempotencyStore:
    def __init__(
        self,
        database: Database,
        error_domain: str,
        *,
        fingerprint: RequestFingerprint,
        lease: timedelta = timedelta(seconds=30),
        retention: timedelta = timedelta(hours=48),
        clock: Clock = utc_now,
        purge_batch_size: int = 500,
    ) -> None:
        self._db = database
        self._domain = error_domain
        self._fingerprint = fingerprint
        self._lease = lease
        self._retention = retention
        self._clock = clock
        self._purge_batch_size = purge_batch_size

    async def run(
        self,
        *,
        method: str,
        key: str | None,
        request: Message,
        response_type: type[ResponseT],
        operation: Operation[ResponseT],
        check: Callable[[], object] = _no_check,
    ) -> ResponseT:
        """Run `operation` at most once per (scope, key); replay its outcome to every retry. `check` validates
        the request (raising a domain error) when no outcome is stored under the key, before it is claimed: a
        pure function of the request, for it runs outside any transaction."""
        key = validate_key(key)
        scope = await self._scope_of(method, key)
        fingerprint = self._fingerprint(request)
        token = secrets.token_hex(16)
        try:
            stored = await self._claim(scope, key, fingerprint, token, check)
        except errors.DomainError:
            raise  # answered before anything was written
        except BaseException:
            # Cancelled or cut off while the claim committed: it may have, and would keep the key from
            # retries for the whole lease.
            await self._release(scope, key, token)
            raise
        if stored is not None:
            return self._replay(stored, response_type)
        try:
            async with self._db.transaction() as session:
                await self._hold(session, scope, key, token)
                response = await operation(session)
                if not await self._complete(session, scope, key, token, 0, response=response.SerializeToString()):
                    raise _in_use()  # cannot happen while the claim is held; never store over another's
            return response
        except errors.TRANSIENT_ERRORS:
            await self._release(scope, key, token)
            raise
        except errors.DomainError as exc:
            if not exc.outcome:
                await self._release(scope, key, token)
                raise
            status = to_rpc_status(exc, self._domain)
            async with self._db.transaction() as session:
                # A claim locked by another is being taken over: not waited for (see _lock_unless_locked).
                stored_error = await self._lock_unless_locked(session, scope, key, token) and await self._complete(
                    session, scope, key, token, status_code_for(exc).value[0], status=status.SerializeToString()
                )
            if not stored_error:
                # Taken over after the operation rolled back: the key's outcome is the new attempt's,
                # which a retry gets; this error would contradict it.
                raise _in_use() from exc
            raise
        except BaseException:
            await self._release(scope, key, token)
            raise

    async def purge_expired(self) -> int:
        """Delete records past the retention period, in batches; returns how many.

        An hourly purge meets an hour of keys (180,000 at 50 charges/s): deleted in one statement, it held
        the write lock throughout, and on SQLite, whose statements run on the event loop, stopped every call
        of the service for seconds."""
        cutoff = self._clock() - self._retention
        return await delete_in_batches(
            self._db,
            records,
            (records.c.scope, records.c.key),
            records.c.created_at < cutoff,
            batch_size=self._purge_batch_size,
        )

    async def _scope_of(self, method: str, key: str) -> str:
        """The scope the key's record is kept under: `scope_for(method)`, or, for a scope too long for its
        column, the scope written out when an earlier release stored the record so on SQLite.

        That release stored every scope in full, and SQLite ignores the column's length: a retry after the
        upgrade that looked under the digest only would miss the record and run the call (a Charge) again.
        Such records are looked for rather than rewritten to their digest by a migration, since an older
        release (the rolling update's old pods, a rollback) would then miss them in turn, and the old pods
        would go on writing scopes in full after the migration ran. The extra read is for over-long scopes
        on SQLite only; once the records of earlier releases are past their retention, it finds nothing."""
        scope = scope_for(method)
        written_out = _written_out_scope(method)
        if scope == written_out or self._db.dialect != "sqlite":
            return scope
        async with self._db.read() as session:
            kept = set(
                (await session.execute(_SCOPES_OF_KEY, {"b_scopes": [scope, written_out], "b_key": key})).scalars()
            )
        return written_out if written_out in kept and scope not in kept else scope

    async def _claim(
        self, scope: str, key: str, fingerprint: str, token: str, check: Callable[[], object] = _no_check
    ) -> Any | None:
        """Take the key under `token` (returns None) or return the completed record to replay; raise
        otherwise."""
        now = self._clock()
        this_key = {"b_scope": scope, "b_key": key}
        # A look without the write lock first: a retry of a finished or running request is answered at
        # once instead of queueing behind the writer (on SQLite, the very request it duplicates).
        seen = await self._look(this_key, fingerprint, now)
        if seen is not None:
            return seen
        try:
            check()
        except errors.DomainError:
            # Refused without the write lock: under it, the refusal queued behind every writer and, on SQLite
            # with the lock held past the 5 s a writer waits for it (db._begin_writing), failed "database is
            # locked" instead. But the rules may have tightened since a release that accepted the request, and
            # its outcome may have been stored since the look above (an older pod completing it in a rolling
            # update): refusing that retry would turn a request already done into one refused on every try, so
            # a second look replays what is there now (or answers IN_USE while it runs). Nothing was written:
            # no key taken.
            seen = await self._look(this_key, fingerprint, self._clock())
            if seen is not None:
                return seen
            raise
        try:
            async with self._db.transaction() as session:
                row = (await session.execute(_FIND_FOR_UPDATE, this_key)).one_or_none()
                if self._replayable(row, fingerprint, now):
                    return row
                if row is None or as_utc(row.created_at) < now - self._retention:
                    if row is not None:
                        await session.execute(_DELETE, this_key)
                    await session.execute(
                        _INSERT,
                        {
                            "scope": scope,
                            "key": key,
                            "request_hash": fingerprint,
                            "state": IN_PROGRESS,
                            "locked_until": now + self._lease,
                            "created_at": now,
                            "claim_token": token,
                        },
                    )
                    return None
                # The lease ran out and the claim is not locked by a running operation (on PostgreSQL this
                # waited for it): its process died, or has not begun the operation and will find the
                # claim no longer its own.
                log.warning("taking over an idempotency key whose lease ran out", extra={"scope": scope})
                await session.execute(
                    _UPDATE,
                    {**this_key, "request_hash": fingerprint, "locked_until": now + self._lease, "claim_token": token},
                )
                return None
        except IntegrityError:
            # Another request inserted the same key between our read and our insert (PostgreSQL).
            raise _in_use() from None

    async def _look(self, this_key: Mapping[str, str], fingerprint: str, now: datetime) -> Any | None:
        """The key's completed record to replay, read without the write lock; IDEMPOTENCY_KEY_REUSED for
        another request's, IN_USE while its claim's lease runs; None when there is nothing (or a claim whose
        lease ran out) under the key."""
        async with self._db.read() as session:
            seen = (await session.execute(_FIND, this_key)).one_or_none()
        return seen if self._replayable(seen, fingerprint, now) else None

    def _replayable(self, row: Any | None, fingerprint: str, now: datetime) -> bool:
        """Whether `row`, the key's record, is an outcome to replay; IDEMPOTENCY_KEY_REUSED for another request's,
        IN_USE while its claim's lease runs; False when there is none, it is past retention, or it is a claim
        whose lease ran out."""
        if row is None or as_utc(row.created_at) < now - self._retention:
            return False
        if row.state != COMPLETED:
            # Running, the first request's outcome is not known yet: another request under its key is told to
            # come back (IN_USE, retryable), not that the key is spent. REUSED then let orders cancel "nothing
            # was charged" while the first Charge went on to capture. A claim whose lease ran out stored
            # nothing: the key is taken over by whichever request comes.
            if as_utc(row.locked_until) > now:
                raise _in_use()
            return False
        if row.request_hash != fingerprint:
            raise key_reused()
        return True

    @staticmethod
    async def _hold(session: DbConnection, scope: str, key: str, token: str) -> None:
        """Lock the claim for the rest of the operation's transaction, or ABORTED if it was taken over.

        Without the lock a retry after the lease would take the key over while the operation still runs,
        and both would commit their effect."""
        held = await session.execute(_HOLD_MY_CLAIM, {"b_scope": scope, "b_key": key, "b_token": token})
        if held.one_or_none() is None:
            raise _in_use()

    @staticmethod
    async def _lock_unless_locked(session: DbConnection, scope: str, key: str, token: str) -> bool:
        """Lock the claim holding `token` for the transaction; False if there is none or another transaction
        has it locked: a retry taking it over after its lease (the key is then the retry's), or, for a moment, a
        request for the same key on its way to IDEMPOTENCY_KEY_IN_USE (see _MY_UNLOCKED_CLAIM).

        For what an attempt writes after its operation's transaction ended: a plain statement that met the
        row while a retry was taking it over waited for the retry's commit and then for the lock the retry's
        operation holds on the new claim, so the caller's answer waited for the retry's whole work."""
        mine = await session.execute(_MY_UNLOCKED_CLAIM, {"b_scope": scope, "b_key": key, "b_token": token})
        return mine.one_or_none() is not None

    @staticmethod
    async def _complete(
        session: DbConnection,
        scope: str,
        key: str,
        token: str,
        code: int,
        *,
        response: bytes | None = None,
        status: bytes | None = None,
    ) -> bool:
        """Store the outcome on the claim holding `token`; False if there is none (it was taken over)."""
        result = await session.execute(
            _UPDATE_MY_CLAIM,
            {
                "b_scope": scope,
                "b_key": key,
                "b_token": token,
                "state": COMPLETED,
                "status_code": code,
                "response": response,
                "status": status,
            },
        )
        return bool(result.rowcount)

    async def _release(self, scope: str, key: str, token: str) -> None:
        try:
            async with self._db.transaction() as session:
                # Only our claim: after a takeover the key is another attempt's, still running.
                if await self._lock_unless_locked(session, scope, key, token):
                    await session.execute(_DELETE_MY_CLAIM, {"b_scope": scope, "b_key": key, "b_token": token})
        except Exception as error:
            # The lease still frees the key; a failed release only delays a retry.
            if not database_unavailable(error):
                log.exception("could not release idempotency key")
                return
            # An outage, no bug: a line, not a traceback for every call it fails.
            log.warning(
                "could not release idempotency key (its lease frees it): %s", cause_line(error), extra={"scope": scope}
            )

    @staticmethod
    def _replay(row: Any, response_type: type[ResponseT]) -> ResponseT:
        if row.status_code == 0:
            return response_type.FromString(row.response)
        # Never shed: a shed answer is RESOURCE_EXHAUSTED, a transient error, which `run` never stores (it
        # releases the key for the retry instead).
        raise errors.ReplayedError(row.status, "replayed stored error")
