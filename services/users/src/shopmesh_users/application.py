"""The users service's use cases: validate with the domain, hash and sign through the adapters, read and
write through the store, each database step in its own short transaction."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shopmesh_chassis import call_context
from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.db import Database
from shopmesh_chassis.db_errors import DATABASE_ERRORS, Duplicate, database_errors_as_domain_errors
from shopmesh_chassis.errors import Aborted, ResourceExhausted
from shopmesh_chassis.tasks import Detached
from shopmesh_users.domain import keys as key_schedule
from shopmesh_users.domain.errors import (
    email_already_registered,
    invalid_credentials,
    no_signing_key,
    too_many_login_attempts,
    user_not_found,
)
from shopmesh_users.domain.failed_logins import LoginThrottle, email_key
from shopmesh_users.domain.keys import KeyMaterial, Rotation, SigningKey
from shopmesh_users.domain.models import Account, Credentials, User, new_user_id
from shopmesh_users.domain.tokens import build_access_claims, new_token_id, next_cutoff
from shopmesh_users.domain.validation import (
    guess_question,
    validate_login,
    validate_registration,
    validate_user_id,
)
from shopmesh_users.password_strength import PasswordStrength
from shopmesh_users.passwords import Passwords
from shopmesh_users.signing import generate_key_material, sign_access_token
from shopmesh_users.store.repository import (
    LoginAttemptRepository,
    SigningKeyRepository,
    UserRepository,
    prune_login_attempts,
)

log = logging.getLogger("shopmesh.users")

# What skips a password hash upgrade instead of refusing the login: a full hashing queue, the database.
_HASH_UPGRADE_FAILURES: tuple[type[Exception], ...] = (ResourceExhausted, *DATABASE_ERRORS)

# Whether to change the keys at all, given the stored ones and the time.
KeyCondition = Callable[[Sequence[SigningKey], datetime], bool]
# The change: the key to add and those to retire or delete.
KeyPlan = Callable[[Sequence[SigningKey], KeyMaterial, datetime], Rotation]


class KeysKeptChanging(RuntimeError):
    """Replicas' rotations won every attempt of a revocation: nothing was revoked."""


def _always(_keys: Sequence[SigningKey], _now: datetime) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    token_lifetime: timedelta
    publish_ahead: timedelta
    # Zero: no periodic rotation.
    rotation_interval: timedelta


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_at: datetime
    user_id: str


class UsersApplication:
    def __init__(
        self,
        database: Database,
        passwords: Passwords,
        policy: KeyPolicy,
        clock: Clock = utc_now,
        login_throttle: LoginThrottle | None = None,
        password_strength: PasswordStrength | None = None,
    ) -> None:
        self._database = database
        self._passwords = passwords
        self._policy = policy
        self._clock = clock
        # None: logins are not throttled per e-mail (the revoke-keys command, which logs nobody in).
        self._login_throttle = login_throttle
        # Asked of a new password only: an account whose password it would refuse still logs in. Its process
        # starts with the service (wiring.build), else at the first Register: the revoke-keys command, which
        # registers nobody, starts none.
        self._password_strength = password_strength or PasswordStrength()
        # Takes and give-backs of login attempts while they run. Shielded, they outlive a login cancelled while it
        # awaits them, and then nothing else awaits them: `settle_login_attempts` does, at shutdown.
        self._attempt_writes = Detached()

    # --- accounts ----------------------------------------------------------------------------------

    @database_errors_as_domain_errors
    async def register(self, email: str, password: str, display_name: str) -> User:
        # Bounded apart from the hashing queue (Passwords.before_hash): the estimate costs up to ~0.1 s of CPU for 32
        # characters of l33t symbols, one at a time, so a flood of Registers is refused at once, not queued for it
        # without bound; and a Register takes its hashing place only for its hash, so estimating ones never make
        # logins PASSWORD_HASHING_BUSY while the hash threads idle.
        with self._passwords.before_hash():
            asked = guess_question(email, password, display_name)
            guessable = asked is not None and await self._password_strength.too_guessable(*asked)
        registration = validate_registration(email, password, display_name, guessable=guessable)
        password_hash = await self._passwords.hash(registration.password)
        user = User(new_user_id(), registration.email, registration.display_name, self._clock())
        try:
            async with self._database.transaction() as session:
                await UserRepository(session).add(user, password_hash)
        except Duplicate:
            raise email_already_registered(user.email) from None
        log.info("user registered", extra={"user_id": user.id})
        return user

    @database_errors_as_domain_errors
    async def login(self, email: str, password: str) -> IssuedToken:
        credentials = validate_login(email, password)
        throttled = self._login_throttle is not None
        attempts_key = email_key(credentials.email)
        if throttled and (wait := await self._take_login_attempt(attempts_key)) > 0:
            # Before any hashing: a throttled guess costs the service nothing.
            raise too_many_login_attempts(wait)
        try:
            account, matched = await self._check_password(credentials)
        except BaseException:
            # No answer about the password (hashing busy, database down, the caller's deadline or cancellation):
            # not a guess, so the attempt is not spent.
            if throttled:
                await self._give_back_login_attempt(attempts_key)
            raise
        # From here the attempt stays spent, whatever ends the login: the password has been checked, and a wrong
        # one is known to be wrong (a right one goes on to its token). Given back when the check as sent below is
        # cut (a deadline between the two checks, its hashing busy), every guess that normalizing changes would
        # be checked for free.
        matched_as_sent = not matched and await self._check_password_as_sent(account, credentials)
        if account is None or not (matched or matched_as_sent):
            # The attempt stays taken: this is what the throttle counts.
            raise invalid_credentials()
        if throttled:
            await self._forget_login_attempts(attempts_key)
        if matched_as_sent or self._passwords.needs_rehash(account.password_hash):
            await self._upgrade_password_hash(account.user.id, account.password_hash, credentials.password)
        # The keys as they are after the password check, which may wait seconds for a hashing turn: keys
        # read before it could be ones revoked meanwhile (a leaked key signing new tokens).
        async with self._database.read() as session:
            keys = await SigningKeyRepository(session).all()
        now = self._clock()
        key = key_schedule.signing_key(keys, now)
        if key is None:
            raise no_signing_key()
        lifetime = self._policy.token_lifetime
        if not key.covers(lifetime):
            # Recorded before the token exists: the key's publication must outlast it. Once per key after
            # the lifetime is raised, not per login.
            async with self._database.transaction() as session:
                await SigningKeyRepository(session).record_token_lifetime(key.kid, lifetime)
        # The cutoff as the account was read, before the password check: a sign-out while the password was
        # being checked is one the token may fall under (refused as revoked), as it raced it.
        claims = build_access_claims(account.user.id, now, lifetime, new_token_id(), account.tokens_valid_after)
        return IssuedToken(sign_access_token(claims, key), claims.expires_at, account.user.id)

    async def _take_login_attempt(self, key: str) -> float:
        """Take one of the e-mail's attempts: 0.0, or the seconds until one may be taken (nothing taken).

        Shielded: a deadline or cancellation can come while the transaction commits, after the database has
        applied the COMMIT and before its answer is back (PostgreSQL), and the attempt would stay taken by a call
        that failed. The take runs on instead, and once it has ended an attempt it took is given back."""
        taking = self._attempt_writes.start(self._take(key))
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            taking.add_done_callback(functools.partial(self._give_back_if_taken, key))
            raise

    async def _take(self, key: str) -> float:
        assert self._login_throttle is not None
        async with self._database.transaction() as session:
            attempts = LoginAttemptRepository(session)
            # A second round only when another replica stored the e-mail's first bucket between this read and
            # this insert; a third when a success forgot that bucket again just as fast.
            for _ in range(3):
                stored = await attempts.locked(key)
                taken = self._login_throttle.take(stored, self._clock())
                if taken.stored is None:
                    return taken.retry_after_seconds
                # Stored for a refusal too: one whose bucket's time was capped (LoginThrottle.take).
                if stored is not None:
                    await attempts.replace(key, taken.stored)
                    return taken.retry_after_seconds
                if await attempts.add(key, taken.stored):
                    return taken.retry_after_seconds
        raise Aborted("concurrent logins for this e-mail address; retry", reason="CONCURRENT_UPDATE")

    def _give_back_if_taken(self, key: str, taking: asyncio.Task[float]) -> None:
        """The end of a take whose login was cancelled meanwhile: the attempt goes back if it was taken. Once, and
        only then: a give-back of an attempt never taken would hand out one more guess."""
        if taking.cancelled():
            return
        if (error := taking.exception()) is not None:
            # Retrieved here, as nobody awaits it any more. The type only: a database error's text may carry the
            # statement's parameters.
            log.warning("login attempt of a cancelled login not taken (%s)", type(error).__name__)
            return
        if taking.result() == 0.0:
            self._attempt_writes.start(self._give_back(key))

    async def _give_back_login_attempt(self, key: str) -> None:
        """Shielded: it runs while the login unwinds from its own error or cancellation, which is what the caller
        must get, not a failure (or a second cancel) of this write."""
        await asyncio.shield(self._attempt_writes.start(self._give_back(key)))

    async def _give_back(self, key: str) -> None:
        """Best effort: lost, the attempt stays taken until the bucket refills."""
        assert self._login_throttle is not None
        try:
            async with self._database.transaction() as session:
                attempts = LoginAttemptRepository(session)
                stored = await attempts.locked(key)
                if stored is not None:  # none: a success forgot it, or it was pruned; full either way
                    await attempts.replace(key, self._login_throttle.give_back(stored, self._clock()))
        except DATABASE_ERRORS as error:
            # The type only: a database error's text may carry the statement's parameters.
            log.warning("login attempt not given back (%s); it stays taken until it refills", type(error).__name__)

    async def settle_login_attempts(self) -> None:
        """At shutdown, once the server has stopped and before the database closes: wait for the takes and
        give-backs that logins cancelled meanwhile left running, so that the event loop's end does not cut them
        off (an attempt left taken, or "Task was destroyed but it is pending"). Bounded by the shutdown hooks'
        budget (SHUTDOWN_HOOKS_BUDGET_SECONDS): cut off there, the writes still running are cancelled, their
        attempts left taken until they refill, and waited for while they roll back (the time the hooks leave a
        hook cut off to unwind): the database closes after them (`tasks.Detached.settle`)."""
        await self._attempt_writes.settle(
            lambda count: log.info("waiting for %d login attempt write(s) of ended logins", count)
        )

    async def _forget_login_attempts(self, key: str) -> None:
        """After the right password. Best effort, as the hash upgrade: the password was checked and right, so a
        database failing this delete must not refuse the login; the attempts stay taken until they refill."""
        try:
            async with self._database.transaction() as session:
                await LoginAttemptRepository(session).forget(key)
        except DATABASE_ERRORS as error:
            # The type only: a database error's text may carry the statement's parameters.
            log.warning("login attempts not forgotten (%s); they stay taken until they refill", type(error).__name__)

    async def prune_login_attempts(self) -> int:
        """Delete the stored login attempts that have refilled to a full bucket (the same as none); how many."""
        if self._login_throttle is None:
            return 0
        return await prune_login_attempts(self._database, self._login_throttle.full_since(self._clock()))

    async def _check_password(self, credentials: Credentials) -> tuple[Account | None, bool]:
        """The account, and whether the password matched as normalized."""
        # The same read and the same hashing for a known and an unknown e-mail: both take about as long.
        async with self._database.transaction() as session:
            account = await UserRepository(session).account_by_email(credentials.email)
        matched = await self._passwords.verify(account.password_hash if account else None, credentials.password)
        return account, matched

    async def _check_password_as_sent(self, account: Account | None, credentials: Credentials) -> bool:
        """Whether the password matched as sent, when normalizing changed it."""
        if credentials.password_as_sent is None:
            return False
        # Accounts registered before passwords were normalized hold a hash of the password as it was
        # sent. Checked for an unknown e-mail too, so that both still cost the same hashing.
        return await self._passwords.verify(account.password_hash if account else None, credentials.password_as_sent)

    async def _upgrade_password_hash(self, user_id: str, old_hash: str, password: str) -> None:
        """Best effort: the password was right and the old hash still works, so a full hashing queue or a
        database failure here must not refuse the login; the next login tries again."""
        try:
            new_hash = await self._passwords.hash(password)
            async with self._database.transaction() as session:
                await UserRepository(session).replace_password_hash(user_id, old_hash, new_hash)
        except _HASH_UPGRADE_FAILURES as error:
            # The error's type only: a database error's text may carry the statement's parameters, the hashes.
            log.warning(
                "password hash upgrade skipped (%s); the next login tries again",
                type(error).__name__,
                extra={"user_id": user_id},
            )
            return
        log.info("password hash upgraded (normalized password, configured argon2 costs)", extra={"user_id": user_id})

    @database_errors_as_domain_errors
    async def get_user(self, user_id: str) -> User:
        # The user's e-mail address is in the answer: only theirs to read when the gateway acts for one.
        user_id = self._acting_for(user_id)
        async with self._database.read() as session:
            user = await UserRepository(session).by_id(user_id)
        if user is None:
            raise user_not_found(user_id)
        return user

    @database_errors_as_domain_errors
    async def sign_out(self, user_id: str) -> datetime:
        """Revoke every token of the user issued so far: the cutoff moves to now, or to the iat a Login would
        stamp now when that is later (`next_cutoff`), never back. The new cutoff."""
        user_id = self._acting_for(user_id)
        async with self._database.transaction() as session:
            repository = UserRepository(session)
            exists, stored = await repository.locked_token_cutoff(user_id)
            if not exists:
                raise user_not_found(user_id)
            cutoff = next_cutoff(stored, self._clock())
            if cutoff != stored:
                await repository.set_token_cutoff(user_id, cutoff)
        log.info("user signed out; tokens issued so far revoked", extra={"user_id": user_id})
        return cutoff

    @database_errors_as_domain_errors
    async def token_cutoff(self, user_id: str) -> datetime | None:
        """The user's cutoff: tokens issued at or before it are revoked. None: the user never signed out."""
        user_id = self._acting_for(user_id)
        async with self._database.read() as session:
            exists, cutoff = await UserRepository(session).token_cutoff(user_id)
        if not exists:
            raise user_not_found(user_id)
        return cutoff

    @staticmethod
    def _acting_for(user_id: str) -> str:
        user_id = validate_user_id(user_id)
        call_context.check_acting_for(user_id)
        return user_id

    # --- signing keys ------------------------------------------------------------------------------

    @database_errors_as_domain_errors
    async def published_jwks(self) -> list[Mapping[str, str]]:
        """The public JWKs verifiers need now, newest first."""
        async with self._database.read() as session:
            keys = await SigningKeyRepository(session).all()
        return [k.public_jwk for k in key_schedule.published_keys(keys, self._clock())]

    async def ensure_signing_key(self) -> None:
        """At startup: make a key that signs at once if none can sign now (a new database).

        The first key skips the publish-ahead: no verifier can hold a token of this service yet, and one
        that meets the unknown kid refetches the JWKS."""
        await self._change_keys(
            self._rotation(timedelta(0)), when=lambda keys, now: key_schedule.signing_key(keys, now) is None
        )

    async def rotate_keys(self) -> SigningKey | None:
        """Publish a new key now; it signs after the publish-ahead delay, when the current key retires.
        None when another replica added a key at the same moment (that key serves instead)."""
        rotation = await self._change_keys(self._rotation(self._policy.publish_ahead))
        return rotation.new_key if rotation else None

    async def rotate_keys_if_due(self) -> SigningKey | None:
        """`rotate_keys` when the newest key is as old as the rotation interval; None otherwise."""
        interval = self._policy.rotation_interval
        rotation = await self._change_keys(
            self._rotation(self._policy.publish_ahead),
            when=lambda keys, now: key_schedule.rotation_due(keys, now, interval),
        )
        return rotation.new_key if rotation else None

    async def revoke_keys(self) -> Rotation:
        """Delete every key and add one that signs at once (a key may have leaked): tokens signed so far
        stop verifying once verifiers refetch the key set (the gateway: at the latest after
        JWKS_MAX_AGE_SECONDS)."""
        for _ in range(3):
            # None only when a replica's periodic rotation took the same generation: plan again on top.
            rotation = await self._change_keys(self._revocation)
            if rotation is not None:
                log.warning(
                    "every signing key revoked; %s signs from now on",
                    rotation.new_key.kid,
                    extra={"kid": rotation.new_key.kid, "revoked": list(rotation.expired)},
                )
                return rotation
        raise KeysKeptChanging("signing keys kept changing under the revocation; nothing revoked, run it again")

    def _revocation(self, keys: Sequence[SigningKey], material: KeyMaterial, now: datetime) -> Rotation:
        return key_schedule.plan_revocation(keys, material, now, self._policy.token_lifetime)

    def _rotation(self, publish_ahead: timedelta) -> KeyPlan:
        lifetime = self._policy.token_lifetime
        return lambda keys, material, now: key_schedule.plan_rotation(keys, material, now, publish_ahead, lifetime)

    async def _change_keys(self, plan: KeyPlan, when: KeyCondition = _always) -> Rotation | None:
        if when is not _always:
            # The periodic check finds nothing due nearly every time: decided on a snapshot, it neither
            # takes the write lock (on SQLite, waited for up to 5 s) nor makes a key.
            async with self._database.read() as session:
                if not when(await SigningKeyRepository(session).all(), self._clock()):
                    return None
        material = generate_key_material()
        try:
            async with self._database.transaction() as session:
                repository = SigningKeyRepository(session)
                keys = await repository.all()
                now = self._clock()
                if not when(keys, now):
                    return None
                rotation = plan(keys, material, now)
                await repository.add(rotation.new_key)
                if rotation.replaced is not None:
                    await repository.retire(rotation.replaced.kid, rotation.new_key.activates_at)
                await repository.delete(rotation.expired)
        except Duplicate:
            log.info("another replica added a signing key at the same moment; keeping theirs")
            return None
        new_key = rotation.new_key
        log.info(
            "signing key %s published; it signs from %s",
            new_key.kid,
            new_key.activates_at.isoformat(),
            extra={"kid": new_key.kid, "replaced": rotation.replaced.kid if rotation.replaced else None},
        )
        return rotation
