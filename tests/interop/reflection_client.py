#!/usr/bin/env python3
"""An independent, non-Rust client of a Kith identity service, built from server reflection alone.

    python3 reflection_client.py --target unix:/path/identity.sock --authority localhost
    python3 reflection_client.py --target 127.0.0.1:PORT --token-file /path/identity.cookie
    python3 reflection_client.py --target 127.0.0.1:PORT --expect-unauthenticated

No .proto file and no generated Kith code: everything Kith-specific is learned from the server's
reflection service, the way grpcurl would. Checks:

1. both reflection services (grpc.reflection.v1 and v1alpha) list kith.identity.v1.Identity and
   grpc.health.v1.Health;
2. the file descriptors for kith.identity.v1.Identity (and kith.common.v1.ErrorDetail, and
   grpc.health.v1.Health) fetched by symbol build a descriptor pool; message classes come from it;
   generic unary calls of Health.Check, Identity.Show and Identity.Sign succeed;
3. the ed25519 signature from Sign verifies with the `cryptography` package over `signed_bytes`,
   and signed_bytes == b"kith-signature-v1\\0" + len(ctx) + ctx + BLAKE3(message) (when the
   `blake3` package is installed);
4. Sign under the reserved context "kith/profile" fails with PERMISSION_DENIED, and the
   `grpc-status-details-bin` trailer holds a kith.common.v1.ErrorDetail with reason
   "reserved_context": inside a google.rpc.Status as a google.protobuf.Any (the gRPC convention,
   read with grpcio-status), or else bare, which is reported as a known issue;
5. with --expect-unauthenticated (TCP, no token): reflection, health and Show all fail with
   UNAUTHENTICATED.

With --authority on a unix target it also reports (as a note, not a failure) whether the server
accepts grpc-core's default :authority for unix sockets, the %-encoded socket path.

Prints one line per check and a summary; exits 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

IDENTITY_SERVICE = "kith.identity.v1.Identity"
HEALTH_SERVICE = "grpc.health.v1.Health"
ERROR_DETAIL = "kith.common.v1.ErrorDetail"
# grpcio-reflection ships only the v1alpha messages; v1's are identical on the wire (same fields,
# same numbers), only the service name differs, so one set of message classes serves both.
REFLECTION_SERVICES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")
SIGNATURE_DOMAIN = b"kith-signature-v1\x00"
TIMEOUT = 10.0


class CheckFailed(Exception):
    pass


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


class Reflection:
    """A minimal gRPC server-reflection client over a generic stream-stream callable."""

    def __init__(self, channel: grpc.Channel, service: str, metadata: tuple):
        self.service = service
        self._metadata = metadata
        self._call = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )

    def ask(self, **request) -> reflection_pb2.ServerReflectionResponse:
        responses = list(
            self._call(
                iter([reflection_pb2.ServerReflectionRequest(**request)]),
                metadata=self._metadata,
                timeout=TIMEOUT,
            )
        )
        expect(len(responses) == 1, f"{self.service}: expected one response to {request}, got {len(responses)}")
        response = responses[0]
        if response.HasField("error_response"):
            err = response.error_response
            raise CheckFailed(f"{self.service}: {request} -> error {err.error_code}: {err.error_message}")
        return response

    def list_services(self) -> list[str]:
        response = self.ask(list_services="")
        expect(response.HasField("list_services_response"), f"{self.service}: no list_services_response")
        return [s.name for s in response.list_services_response.service]

    def _files(self, response) -> list[descriptor_pb2.FileDescriptorProto]:
        expect(response.HasField("file_descriptor_response"), f"{self.service}: no file_descriptor_response")
        files = []
        for raw in response.file_descriptor_response.file_descriptor_proto:
            files.append(descriptor_pb2.FileDescriptorProto.FromString(raw))
        expect(bool(files), f"{self.service}: empty file_descriptor_response")
        return files

    def files_containing_symbol(self, symbol: str) -> list[descriptor_pb2.FileDescriptorProto]:
        return self._files(self.ask(file_containing_symbol=symbol))

    def files_by_name(self, name: str) -> list[descriptor_pb2.FileDescriptorProto]:
        return self._files(self.ask(file_by_filename=name))


class Pool:
    """A descriptor pool filled only from reflection answers, dependencies first."""

    def __init__(self, reflection: Reflection):
        self.reflection = reflection
        self.pool = descriptor_pool.DescriptorPool()
        self.known: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self.added: set[str] = set()
        self.fetched_by_name: list[str] = []

    def load_symbol(self, symbol: str) -> None:
        for fdp in self.reflection.files_containing_symbol(symbol):
            self.known.setdefault(fdp.name, fdp)
        # The server should send transitive dependencies with the file; fetch any it left out.
        pending = list(self.known)
        while pending:
            name = pending.pop()
            for dep in self.known[name].dependency:
                if dep not in self.known:
                    self.fetched_by_name.append(dep)
                    for fdp in self.reflection.files_by_name(dep):
                        self.known.setdefault(fdp.name, fdp)
                    expect(dep in self.known, f"reflection did not return {dep} when asked for it by name")
                    pending.append(dep)
        for name in list(self.known):
            self._add(name, ())

    def _add(self, name: str, stack: tuple) -> None:
        if name in self.added:
            return
        expect(name not in stack, f"import cycle through {name}")
        for dep in self.known[name].dependency:
            self._add(dep, stack + (name,))
        self.pool.Add(self.known[name])
        self.added.add(name)

    def message_class(self, full_name: str):
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))


def unary(channel: grpc.Channel, pool: Pool, service: str, method: str):
    """A generic unary callable for SERVICE/METHOD with message classes from the pool."""
    descriptor = pool.pool.FindServiceByName(service).methods_by_name[method]
    expect(
        not descriptor.client_streaming and not descriptor.server_streaming,
        f"{service}.{method} is not unary",
    )
    request_class = message_factory.GetMessageClass(descriptor.input_type)
    response_class = message_factory.GetMessageClass(descriptor.output_type)
    call = channel.unary_unary(
        f"/{service}/{method}",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    return call, request_class


def status_details(error: grpc.RpcError) -> bytes | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return value
    return None


def error_detail_of(err: grpc.RpcError, error_detail, run: Run):
    """The kith.common.v1.ErrorDetail of a failed call, how it was encoded, and the raw trailer.

    The gRPC convention (grpc-go, grpc-java, grpcio-status) is a google.rpc.Status in the trailer
    that repeats the code and message, with typed details as google.protobuf.Any. Kith must follow
    it: grpc-go (and so grpcurl) turns any other trailer into INTERNAL."""
    raw = status_details(err)
    expect(raw is not None, "no grpc-status-details-bin trailer")
    try:
        standard = rpc_status.from_call(err)
    except ValueError as why:
        expect(False, f"grpc-status-details-bin is not a standard google.rpc.Status: {why}")
    expect(standard is not None, "grpcio-status found no google.rpc.Status")
    found = [d for d in standard.details if d.type_url.rpartition("/")[2] == ERROR_DETAIL]
    expect(
        len(found) == 1,
        f"google.rpc.Status in the trailer carries no single {ERROR_DETAIL}: {[d.type_url for d in standard.details]}",
    )
    return error_detail.FromString(found[0].value), f"google.rpc.Status with an Any {found[0].type_url}", raw


def blake3_or_none():
    try:
        from blake3 import blake3
    except ImportError:
        return None
    return blake3


def verify_ed25519(public_key: bytes, signature: bytes, message: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    expect(len(public_key) == 32, f"public key is {len(public_key)} bytes, expected 32")
    expect(len(signature) == 64, f"signature is {len(signature)} bytes, expected 64")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        raise CheckFailed("the ed25519 signature does not verify over signed_bytes") from None


class Run:
    def __init__(self, label: str):
        self.label = label
        self.passed: list[str] = []
        self.failed: list[str] = []
        self.notes: list[str] = []

    def check(self, name: str, fn) -> bool:
        t0 = time.monotonic()
        try:
            detail = fn()
        except CheckFailed as err:
            self.failed.append(name)
            print(f"  FAIL {name}: {err}", flush=True)
            return False
        except grpc.RpcError as err:
            self.failed.append(name)
            print(f"  FAIL {name}: unexpected RPC error {err.code().name}: {err.details()}", flush=True)
            return False
        except Exception as err:  # a bug in this script or an undecodable answer: still a failure
            self.failed.append(name)
            print(f"  FAIL {name}: {type(err).__name__}: {err}", flush=True)
            return False
        self.passed.append(name)
        ms = (time.monotonic() - t0) * 1000
        print(f"  ok   {name} ({ms:.0f} ms){': ' + detail if detail else ''}", flush=True)
        return True

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note {text}", flush=True)


def run_authenticated(channel: grpc.Channel, metadata: tuple, run: Run) -> None:
    state: dict = {}

    # 1. Both reflection services list the identity and health services.
    for service in REFLECTION_SERVICES:
        def listed(service=service):
            names = Reflection(channel, service, metadata).list_services()
            for wanted in (IDENTITY_SERVICE, HEALTH_SERVICE):
                expect(wanted in names, f"{service} does not list {wanted}: {names}")
            return ", ".join(sorted(names))

        run.check(f"{service} lists services", listed)

    # 2. Descriptors by symbol, a pool, message classes. v1 is the primary; v1alpha must agree.
    def build_pool():
        pool = Pool(Reflection(channel, REFLECTION_SERVICES[0], metadata))
        for symbol in (IDENTITY_SERVICE, ERROR_DETAIL, HEALTH_SERVICE):
            pool.load_symbol(symbol)
        service = pool.pool.FindServiceByName(IDENTITY_SERVICE)
        for method in ("Show", "Sign"):
            expect(method in service.methods_by_name, f"{IDENTITY_SERVICE} has no method {method}")
        pool.message_class(ERROR_DETAIL)
        state["pool"] = pool
        extra = f"; fetched by name: {pool.fetched_by_name}" if pool.fetched_by_name else ""
        return f"{len(pool.added)} files ({', '.join(sorted(pool.added))}), {len(service.methods)} Identity methods{extra}"

    if not run.check("descriptor pool from reflection (v1, by symbol)", build_pool):
        return
    pool: Pool = state["pool"]

    def v1alpha_agrees():
        other = Reflection(channel, REFLECTION_SERVICES[1], metadata)
        for symbol in (IDENTITY_SERVICE, ERROR_DETAIL, HEALTH_SERVICE):
            for fdp in other.files_containing_symbol(symbol):
                mine = pool.known.get(fdp.name)
                expect(mine is not None, f"v1alpha returned {fdp.name} for {symbol}, v1 did not")
                expect(mine == fdp, f"v1alpha and v1 disagree on {fdp.name}")
        return None

    run.check("v1alpha descriptors equal v1's", v1alpha_agrees)

    def health():
        check, request = unary(channel, pool, HEALTH_SERVICE, "Check")
        serving = pool.pool.FindEnumTypeByName("grpc.health.v1.HealthCheckResponse.ServingStatus").values_by_name["SERVING"].number
        out = []
        for name in ("", IDENTITY_SERVICE):
            response = check(request(service=name), metadata=metadata, timeout=TIMEOUT)
            expect(response.status == serving, f"Health.Check({name!r}) status {response.status}, expected SERVING")
            out.append(f"{name or '(server)'}=SERVING")
        return ", ".join(out)

    run.check("Health.Check (dynamic)", health)

    def show():
        call, request = unary(channel, pool, IDENTITY_SERVICE, "Show")
        response = call(request(), metadata=metadata, timeout=TIMEOUT)
        expect(len(response.identity_public_key) == 32, f"identity_public_key is {len(response.identity_public_key)} bytes")
        expect(response.id.startswith("kith1"), f"id {response.id!r} does not start with kith1")
        state["show"] = response
        return f"id {response.id}, identity key {response.identity_public_key.hex()[:16]}…"

    if not run.check("Identity.Show", show):
        return

    # 3. Sign, verified independently.
    key_kind = pool.pool.FindEnumTypeByName("kith.identity.v1.KeyKind")
    context, message = "interop/test", b"hello"

    def sign(kind: str, expected_key_field: str):
        def go():
            call, request = unary(channel, pool, IDENTITY_SERVICE, "Sign")
            response = call(
                request(context=context, message=message, key=key_kind.values_by_name[kind].number),
                metadata=metadata,
                timeout=TIMEOUT,
            )
            expected_key = getattr(state["show"], expected_key_field)
            if expected_key:
                expect(
                    response.public_key == expected_key,
                    f"signed by {response.public_key.hex()}, Show's {expected_key_field} is {expected_key.hex()}",
                )
            verify_ed25519(response.public_key, response.signature, response.signed_bytes)
            ctx = context.encode()
            prefix = SIGNATURE_DOMAIN + bytes([len(ctx)]) + ctx
            expect(response.signed_bytes.startswith(prefix), f"signed_bytes {response.signed_bytes!r} does not start with {prefix!r}")
            blake3 = blake3_or_none()
            if blake3 is None:
                if "blake3" not in " ".join(run.notes):
                    run.note("the blake3 package is not installed: skipped checking the BLAKE3(message) part of signed_bytes")
                expect(len(response.signed_bytes) == len(prefix) + 32, "signed_bytes has the wrong length")
                return "signature verifies (cryptography.Ed25519PublicKey); layout checked without the hash"
            expected = prefix + blake3(message).digest()
            expect(response.signed_bytes == expected, f"signed_bytes {response.signed_bytes.hex()} != expected {expected.hex()}")
            return "signature verifies (cryptography.Ed25519PublicKey); signed_bytes == domain|len|ctx|BLAKE3(msg)"

        return go

    run.check("Identity.Sign, identity key", sign("KEY_KIND_IDENTITY", "identity_public_key"))
    run.check("Identity.Sign, device key", sign("KEY_KIND_DEVICE", "device_public_key"))

    # 4. A reserved context: PERMISSION_DENIED with a typed ErrorDetail.
    def reserved():
        call, request = unary(channel, pool, IDENTITY_SERVICE, "Sign")
        try:
            call(request(context="kith/profile", message=message), metadata=metadata, timeout=TIMEOUT)
        except grpc.RpcError as err:
            expect(err.code() == grpc.StatusCode.PERMISSION_DENIED, f"status {err.code().name} ({err.details()}), expected PERMISSION_DENIED")
            detail, encoding, raw = error_detail_of(err, pool.message_class(ERROR_DETAIL), run)
            expect(detail.reason == "reserved_context", f"ErrorDetail.reason {detail.reason!r}, expected 'reserved_context' (raw {raw.hex()})")
            expect(bool(detail.message), "ErrorDetail.message is empty")
            return f"reason {detail.reason!r}, message {detail.message!r} ({encoding})"
        raise CheckFailed("Sign under kith/profile succeeded")

    run.check("Sign under kith/profile is refused", reserved)


def run_unauthenticated(channel: grpc.Channel, run: Run) -> None:
    """Without a token over TCP, every call (reflection and health included) is UNAUTHENTICATED."""

    def expect_unauthenticated(what: str, call) -> None:
        try:
            call()
        except grpc.RpcError as err:
            expect(err.code() == grpc.StatusCode.UNAUTHENTICATED, f"{what}: status {err.code().name} ({err.details()}), expected UNAUTHENTICATED")
            return
        raise CheckFailed(f"{what} succeeded without a token")

    for service in REFLECTION_SERVICES:
        run.check(
            f"{service} without a token",
            lambda service=service: expect_unauthenticated(service, Reflection(channel, service, ()).list_services),
        )

    # Method paths alone are enough here: the server must refuse before decoding anything.
    def raw_unary(path: str):
        call = channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return lambda: call(b"", timeout=TIMEOUT)

    run.check(
        "Health.Check without a token",
        lambda: expect_unauthenticated("Health.Check", raw_unary(f"/{HEALTH_SERVICE}/Check")),
    )
    run.check(
        "Identity.Show without a token",
        lambda: expect_unauthenticated("Identity.Show", raw_unary(f"/{IDENTITY_SERVICE}/Show")),
    )
    # A wrong token of the right shape is refused the same way.
    wrong = (("authorization", "Bearer " + "0" * 64),)
    call = channel.unary_unary(f"/{IDENTITY_SERVICE}/Show", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    run.check(
        "Identity.Show with a wrong token",
        lambda: expect_unauthenticated("Identity.Show (wrong token)", lambda: call(b"", metadata=wrong, timeout=TIMEOUT)),
    )


def probe_default_authority(target: str, metadata: tuple, run: Run) -> None:
    """Reports, without failing, whether the server accepts grpc-core's own :authority for a unix
    target: the %-encoded socket path (grpc-core >= 1.57). The `http` crate under hyper/h2 rejects
    a `%` in a host name, so such a request is reset with PROTOCOL_ERROR before tonic sees it."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/{HEALTH_SERVICE}/Check", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        try:
            call(b"", metadata=metadata, timeout=TIMEOUT)
        except grpc.RpcError as err:
            run.note(
                "KNOWN ISSUE: with grpc-core's default :authority for a unix target (the %-encoded socket "
                f"path) the server resets the call: {err.code().name}: {err.details()}; "
                "clients must send `localhost` (grpc.default_authority / grpcurl -authority)"
            )
            return
        run.note("the server now accepts grpc-core's default :authority for a unix target (--authority is no longer needed)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="gRPC target: unix:/path.sock or HOST:PORT")
    parser.add_argument("--token-file", help="file with the bearer token (the service's cookie)")
    parser.add_argument(
        "--authority",
        help="the :authority to send (grpc.default_authority); for unix sockets `localhost`, as grpc-go sends",
    )
    parser.add_argument(
        "--expect-unauthenticated",
        action="store_true",
        help="send no token and check that every call is refused as UNAUTHENTICATED",
    )
    args = parser.parse_args()
    if args.expect_unauthenticated and args.token_file:
        parser.error("--expect-unauthenticated takes no --token-file")

    metadata: tuple = ()
    if args.token_file:
        with open(args.token_file, encoding="ascii") as f:
            token = f.read().strip()
        if not token:
            parser.error(f"{args.token_file} is empty")
        metadata = (("authorization", f"Bearer {token}"),)

    mode = "no token, expecting UNAUTHENTICATED" if args.expect_unauthenticated else ("with token" if metadata else "no token")
    label = f"{args.target} ({mode})"
    print(f"interop: {label}", flush=True)
    started = time.monotonic()
    run = Run(label)
    options = [("grpc.default_authority", args.authority)] if args.authority else []
    with grpc.insecure_channel(args.target, options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        except grpc.FutureTimeoutError:
            print(f"interop: FAIL: could not connect to {args.target} within {TIMEOUT:.0f}s", flush=True)
            return 1
        if args.expect_unauthenticated:
            run_unauthenticated(channel, run)
        else:
            run_authenticated(channel, metadata, run)
    if args.target.startswith("unix:") and args.authority:
        probe_default_authority(args.target, metadata, run)

    elapsed = time.monotonic() - started
    total = len(run.passed) + len(run.failed)
    verdict = "PASS" if total and not run.failed else "FAIL"
    print(f"interop: {verdict} {label}: {len(run.passed)}/{total} checks ok in {elapsed:.2f}s", flush=True)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
