"""TLS party channels (mpcformer.mpc.secure_transport): per-session credentials, a rendezvous that
refuses whoever lacks them while the real ranks still meet, messages on every pair of ranks, a real
CrypTen session over TLS, and the runtime putting torch's backend registry back as it was."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
import time

import pytest

from mpcformer.mpc.config import MPCConfig
from mpcformer.mpc.credentials import issue_credentials, load_credentials, rank_name
from mpcformer.mpc.secure_transport import Mesh, TransportError

pytestmark = pytest.mark.timeout(600)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_credentials_are_private_files_naming_each_rank_and_no_ca_key(tmp_path):
    from cryptography import x509

    directory = issue_credentials(tmp_path / "session", ranks=3)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["ca.pem"] + [f"rank-{r}.{ext}" for r in range(3) for ext in ("pem", "key")])
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for rank in range(3):
        creds = load_credentials(directory, rank)
        cert = x509.load_pem_x509_certificate(creds.cert.read_bytes())
        assert cert.subject.rfc4514_string() == f"CN={rank_name(rank)}"
    with pytest.raises(FileNotFoundError, match="rank 5"):
        load_credentials(directory, 5)


def _intrude(port: int, context: ssl.SSLContext) -> bool:
    """Connect to the rendezvous, claim rank 1; True when it got nothing back (refused)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            break
        except OSError:
            assert time.monotonic() < deadline, "rank 0 never listened"
            time.sleep(0.1)
    try:
        with context.wrap_socket(sock) as tls:
            payload = b'{"rank": 1, "listen": ["127.0.0.1", 1]}'
            tls.sendall(len(payload).to_bytes(4, "big") + payload)
            return tls.recv(1024) == b""
    except (ssl.SSLError, OSError):
        return True


def _client_context(cert_dir=None, rank: int = 1) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # an intruder trusts anyone
    if cert_dir is not None:
        creds = load_credentials(cert_dir, rank)
        context.load_cert_chain(creds.cert, creds.key)
    return context


def test_the_rendezvous_refuses_intruders_and_the_ranks_still_meet_and_talk(tmp_path):
    session = issue_credentials(tmp_path / "session", ranks=3)
    other = issue_credentials(tmp_path / "other", ranks=3)  # a valid rank-1 certificate of another session
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    meshes: dict[int, object] = {}

    def join(rank: int) -> None:
        try:
            meshes[rank] = Mesh(rank, 3, rendezvous, load_credentials(session, rank), timeout_s=120).connect()
        except BaseException as err:  # noqa: BLE001 - reported below
            meshes[rank] = err

    threads = [threading.Thread(target=join, args=(0,))]
    threads[0].start()
    port = int(rendezvous.rsplit(":", 1)[1])
    assert _intrude(port, _client_context())  # no certificate
    assert _intrude(port, _client_context(other))  # another session's CA
    threads += [threading.Thread(target=join, args=(rank,)) for rank in (1, 2)]
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    try:
        assert all(isinstance(meshes[r], Mesh) for r in range(3)), meshes
        assert len(meshes[0].refused) == 2, meshes[0].refused
        received: dict[tuple[int, int], bytes] = {}
        arrived = threading.Semaphore(0)
        for src in range(3):
            for dst in range(3):
                if src != dst:
                    meshes[dst].expect(src, 7, 0, lambda data, k=(src, dst): (received.__setitem__(k, bytes(data)),
                                                                            arrived.release()),
                                       lambda err: arrived.release(), "a test message")
                    meshes[src].send(dst, 7, 0, f"{src}->{dst}".encode() * 1000)
        for _ in range(6):
            assert arrived.acquire(timeout=60)
        assert received == {(s, d): f"{s}->{d}".encode() * 1000 for s in range(3) for d in range(3) if s != d}
    finally:
        for mesh in meshes.values():
            if isinstance(mesh, Mesh):
                mesh.close()


def test_a_rank_without_credentials_cannot_join(tmp_path):
    session = issue_credentials(tmp_path / "session", ranks=2)
    stranger = issue_credentials(tmp_path / "stranger", ranks=2)
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    errors: dict[int, BaseException] = {}

    def join(rank: int, directory) -> None:
        try:
            Mesh(rank, 2, rendezvous, load_credentials(directory, rank), timeout_s=8).connect().close()
        except BaseException as err:  # noqa: BLE001
            errors[rank] = err

    threads = [threading.Thread(target=join, args=(0, session)), threading.Thread(target=join, args=(1, stranger))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert isinstance(errors.get(0), TransportError) and "did not join" in str(errors[0])
    assert 1 in errors  # the stranger never got in either


@pytest.mark.parametrize("issued_by", ["operator", "launcher"])
def test_a_session_over_tls_computes_and_says_so(tmp_path, issued_by):
    from mpcformer.mpc.launcher import run_local

    import transport_party_fns as fns

    # the operator's files, or none: then the local launcher issues a session CA of its own
    credentials = str(issue_credentials(tmp_path / "tls", ranks=3)) if issued_by == "operator" else None
    config = MPCConfig(transport="tls", credentials_dir=credentials, timeout_s=120)
    results = run_local(fns.multiply, args=(16,), config=config, timeout_s=300)
    for party in results:
        assert party["product"] == [i * (i + 2) for i in range(16)]
        assert party["transport"].startswith("tls")


@pytest.mark.parametrize("transport", ["tls", "tcp"])
def test_the_dealer_leaves_cleanly_when_party_0_leaves_an_answer_uncollected(transport):
    from mpcformer.mpc.launcher import run_local

    import transport_party_fns as fns

    # 4M elements (32 MB) are still being computed and sent when party 0 says "terminate" and closes
    config = MPCConfig(transport=transport, timeout_s=120)
    results = run_local(fns.leave_with_an_answer_uncollected, args=(1 << 22,), config=config, timeout_s=300)
    assert [party["rank"] for party in results] == [0, 1]


def test_a_tls_session_without_credentials_fails_saying_so(tmp_path):
    from mpcformer.errors import PartyFailure
    from mpcformer.mpc.launcher import run_local

    import transport_party_fns as fns

    config = MPCConfig(transport="tls", credentials_dir=str(tmp_path / "nothing-here"), timeout_s=20)
    with pytest.raises(PartyFailure, match="credentials"):
        run_local(fns.multiply, args=(4,), config=config, timeout_s=120)


def test_the_runtime_adds_the_tls_backend_for_a_session_and_removes_it_after():
    import torch.distributed as dist

    from mpcformer.mpc.runtime import Runtime

    assert "MPCFORMER_TLS" not in dist.Backend._plugins
    installed = Runtime(MPCConfig(transport="tls", credentials_dir="/nonexistent"), parties=2).install()
    try:
        assert "MPCFORMER_TLS" in dist.Backend._plugins
        assert installed.describe()["transport"].startswith("tls")
    finally:
        installed.restore()
    assert "MPCFORMER_TLS" not in dist.Backend._plugins
    assert MPCConfig().transport == "auto"  # sessions choose TLS only when told (party groups: across nodes)


def test_a_tls_group_keeps_the_name_torch_gives_it():
    """torch stores a group's name in the group's backends; the TLS group is its own backend, and
    destroy_process_group (CrypTen's teardown) looks the name up."""
    from mpcformer.mpc.secure_transport import TlsProcessGroup

    group = TlsProcessGroup(mesh=None, group_id="7", rank=0, size=2, global_ranks=[0, 1])
    group._set_group_name("7")
    assert group.group_name == "7"


def test_a_send_to_a_rank_that_left_raises_the_transport_error_naming_it():
    class Gone:  # a channel whose peer closed before our reader noticed
        def send(self, *parts):
            raise BrokenPipeError(32, "Broken pipe")

    mesh = Mesh.__new__(Mesh)
    mesh.rank, mesh._lost, mesh.channels = 2, {}, {0: Gone()}
    with pytest.raises(TransportError, match="rank 0 is gone"):
        mesh.send(0, 1, 0, b"x")


def test_a_message_lands_whole_whether_its_receive_is_posted_before_or_after_it_arrives(tmp_path):
    import torch

    from mpcformer.mpc.secure_transport import _fill, _target

    session = issue_credentials(tmp_path / "session", ranks=2)
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    meshes: dict[int, object] = {}
    threads = [threading.Thread(target=lambda r=r: meshes.__setitem__(
        r, Mesh(r, 2, rendezvous, load_credentials(session, r), timeout_s=120).connect())) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    try:
        sent = [torch.randint(-2**62, 2**62, (n,), dtype=torch.int64) for n in (3, 100_000, 700_000)]
        early = [torch.empty_like(t) for t in sent]  # posted first: decrypted straight into the tensor
        late = [torch.empty_like(t) for t in sent]  # posted after arrival: kept, then copied in
        arrived, failures = threading.Semaphore(0), []

        def expect(seq, into):
            meshes[1].expect(0, 9, seq, lambda payload: (_fill(into, payload), arrived.release()),
                             lambda err: (failures.append(err), arrived.release()), "a test tensor", _target(into))

        for seq, into in enumerate(early):
            expect(seq, into)
        for seq, tensor in enumerate(sent + sent):
            meshes[0].send(1, 9, seq, memoryview(tensor.numpy()).cast("B"))
        for _ in early:
            assert arrived.acquire(timeout=60)
        time.sleep(0.5)  # the late messages are in rank 1's inbox before anyone asks
        for seq, into in enumerate(late, start=len(sent)):
            expect(seq, into)
        for _ in late:
            assert arrived.acquire(timeout=60)
        assert not failures, failures
        for tensor, a, b in zip(sent, early, late):
            assert torch.equal(a, tensor) and torch.equal(b, tensor)
    finally:
        for mesh in meshes.values():
            mesh.close()
