"""Encrypted execution of a compiled integer circuit through Concrete (concrete-python).

Needs the `fhe` extra (`pip install torch==2.13.0 && pip install "qatfhe[fhe]"`); without
it every entry point raises ImportError with that line.

    module.compile_fhe(p_error=None, global_p_error=None)   lower and compile (fhe_lowering)
    module.fhe_keygen()                                      keys, once per compiled module
    module.forward(X, fhe="execute")                         quantize, encrypt, run, decrypt,
                                                             dequantize; equal to "simulate"
    module.fhe_statistics()                                  what a sample will cost
    module.save_fhe(directory)                               deployment files (below)
    Client(directory), Server(directory)                     the two sides of a deployment

The encrypted part of the circuit takes the input codes and ends at the integers of the
decode op (the last layer's accumulators, or its output codes): the client quantizes in
the clear, encrypts, and after the server's run decrypts and dequantizes in the clear, as
Concrete-ML does.

Failure probability.  Every table lookup is a programmable bootstrap (PBS) that returns a
wrong table entry with a small probability.  p_error bounds that probability per PBS;
global_p_error bounds the probability that any PBS of one sample's run goes wrong (Concrete
accounts for every PBS of the circuit).  Give at most one of them; with neither, Concrete's
default is global_p_error = 1e-5, i.e. at most one sample in 100,000 may come back with
some wrong integer.  fhe_statistics() reports the figures Concrete actually reached
(p_error per PBS and global_p_error per sample); over N samples the chance that some
sample differs from fhe="simulate" is at most 1 - (1 - global_p_error)^N ~ N global_p_error.
Smaller probabilities cost larger cryptographic parameters (slower PBS, bigger keys).

Ranges.  Concrete sizes every encrypted integer from bounds measured on an inputset; here
the inputset is drawn from the calibration samples (or the X given to compile_fhe) so its
bounds equal qatfhe's calibrated node ranges.  A sample whose integers leave the bit widths
of those ranges would come back wrong under encryption; forward(fhe="execute") checks
this in the clear first and raises ValueError naming the node.  A deployed Client cannot
check it (it does not hold the model): compile with samples covering the inputs to serve.

Deployment files (module.save_fhe(directory); plain files, no pickle):
    server.zip          Concrete's server artifact (compiled circuit, a shared library)
    client.specs.json   Concrete's client specs (cryptographic parameters, JSON)
    qatfhe.json         qatfhe's client specs: input quantizer, input shape, the decode of
                        the returned integers, a circuit id and SHA-256 digests of the other
                        two files
Client.save_keys / load_keys keep a client's key set (secret key included) across
processes.  The bytes passed between Client and Server are Concrete's serialised values and
evaluation keys inside a small envelope (magic, JSON header with the kind, circuit id, key
id and shape), so that a ciphertext or key set of another circuit, or keys of another
client, give a clear ValueError instead of a wrong answer."""
import hashlib
import json
import os
import secrets
import shutil
import struct
import tempfile
import time

import numpy as np

from . import fhe_lowering
from .fhe_lowering import concrete

__all__ = ["compile_fhe", "Client", "Server", "FORMAT", "VERSION"]

FORMAT = "qatfhe-fhe-client"
VERSION = 1
MAGIC = b"QATFHE-FHE\x01"
SERVER_FILE, SPECS_FILE, CLIENT_FILE = "server.zip", "client.specs.json", "qatfhe.json"


# ------------------------------------------------------------------ compilation

class FheCircuit:
    """A module's circuit compiled by Concrete: the Concrete circuit, the node ranges it
    was compiled for, and the keys once generated."""

    def __init__(self, module, circuit, ranges, compile_seconds):
        self.module, self.circuit, self.ranges = module, circuit, ranges
        self.compile_seconds = compile_seconds
        self.keygen_seconds = None

    # --- keys
    def keygen(self, force=False, seed=None):
        """Generate (or, with force, regenerate) the keys; returns the seconds it took
        (0.0 when cached)."""
        if self.keygen_seconds is not None and not force:
            return 0.0
        start = time.perf_counter()
        self.circuit.keygen(force=True, seed=seed, encryption_seed=seed)
        self.keygen_seconds = time.perf_counter() - start
        return self.keygen_seconds

    # --- ranges
    def check_ranges(self, codes):
        """ValueError when input codes (n, in_features int64) drive a node outside the bit
        width it was compiled for (the encrypted result would be wrong)."""
        from ._core import bits_for_range
        module = self.module
        measured = module._circuit.run_codes(codes)[2]
        for j, node in enumerate(module._nodes):
            lo, hi = self.ranges[j]
            a, b = int(measured[j, 0]), int(measured[j, 1])
            bits = bits_for_range(lo, hi)
            if bits_for_range(min(a, lo), max(b, hi)) > bits or (lo >= 0 > a):
                raise ValueError(
                    f"the samples drive the {node['kind'].replace('_', ' ')} of "
                    f"{node['name']} (node {j}) to [{a}, {b}], outside the {bits}-bit range "
                    f"the FHE circuit was compiled for ([{lo}, {hi}]): their encrypted "
                    f"results would be wrong; compile_fhe(X) with samples that cover them")

    # --- running
    def run_codes(self, codes, progress=True):
        """Returned integers (n, out) of input codes (n, in_features): encrypt, run and
        decrypt each sample (keys generated first if needed)."""
        module = self.module
        self.keygen()
        out = np.empty((len(codes), module.out_features), np.int64)
        rows = range(len(codes))
        if progress and len(codes) > 1:
            rows = _progress(rows, "FHE samples")
        for i in rows:
            x = codes[i].reshape((1,) + module.in_shape)
            out[i] = np.asarray(self.circuit.encrypt_run_decrypt(x)).reshape(-1)
        return out

    # --- cost
    def lookup_bits(self):
        """{op index: PBS bit width} of every lookup and round op, from Concrete's compiled
        graph: a lookup's input width; after a round, the rounded width; for a lookup that
        reads the output of another lookup which Concrete fused into it (that one then
        counts no PBS), the input width of the fused pair."""
        graph = self.circuit.graph
        ops = self.module.ops
        per_tag = self.circuit.statistics.get("programmable_bootstrap_count_per_tag", {})
        bits = {}
        for node in graph.query_nodes():
            if not node.tag.startswith("op") or not node.tag[2:].isdigit():
                continue
            k = int(node.tag[2:])
            name = node.properties.get("name")
            if name == "round_bit_pattern":
                bits[k] = int(node.properties.get("resulting_bit_width",
                                                  node.output.dtype.bit_width))
            elif node.converted_to_table_lookup and k not in bits:
                bits[k] = int(node.inputs[0].dtype.bit_width)
        for k, op in enumerate(ops):
            before = op.src - 1                       # the op producing this lookup's input
            if op.kind != "lookup" or before < 0 or before not in bits:
                continue
            fused = (ops[before].kind == "lookup"
                     and not per_tag.get(fhe_lowering.tag(before))
                     and self.module._consumers[op.src] == ["lookup"])
            if ops[before].kind == "round" or fused:
                bits[k] = bits[before]
        return bits

    def statistics(self):
        """Concrete's figures for one sample (see QuantizedModule.fhe_statistics)."""
        stats = self.circuit.statistics
        per_tag = stats.get("programmable_bootstrap_count_per_tag", {})
        bits = self.lookup_bits()
        per_bits, lookups = {}, []
        for k, op in enumerate(self.module.ops):
            count = int(per_tag.get(fhe_lowering.tag(k), 0))
            if op.kind in ("lookup", "round", "maxpool") or count:
                width = bits.get(k)
                lookups.append({"op": k, "kind": op.kind, "name": op.name, "pbs": count,
                                "pbs_bits": width})
                if count:
                    per_bits[width] = per_bits.get(width, 0) + count
        per_parameter = {
            f"polynomial_size={p.polynomial_size()}, glwe_dimension={p.glwe_dimension()}, "
            f"input_lwe_dimension={p.input_lwe_dimension()}": int(n)
            for p, n in stats.get("programmable_bootstrap_count_per_parameter", {}).items()}
        return {
            "pbs_count": int(stats["programmable_bootstrap_count"]),
            "pbs_count_per_bit_width": dict(sorted(per_bits.items(),
                                                   key=lambda kv: (kv[0] is None, kv[0]))),
            "pbs_count_per_parameter": per_parameter,
            "complexity": float(stats["complexity"]),
            "max_bit_width": int(self.circuit.graph.maximum_integer_bit_width()),
            "p_error": float(stats["p_error"]),
            "global_p_error": float(stats["global_p_error"]),
            "size_of_secret_keys": int(stats["size_of_secret_keys"]),
            "size_of_bootstrap_keys": int(stats["size_of_bootstrap_keys"]),
            "size_of_keyswitch_keys": int(stats["size_of_keyswitch_keys"]),
            "size_of_inputs": int(stats["size_of_inputs"]),
            "size_of_outputs": int(stats["size_of_outputs"]),
            "key_switch_count": int(stats["key_switch_count"]),
            "lookups": lookups,
            "compile_seconds": self.compile_seconds,
            "keygen_seconds": self.keygen_seconds,
        }

    def annotate(self, report):
        """Add pbs_bits (the PBS bit width computing that value; None for values no PBS
        computes) to every row of a bit-width report."""
        bits = self.lookup_bits()
        for row in report:
            k = row["node"] - 1
            row["pbs_bits"] = bits.get(k) if k >= 0 else None
        return report


def compile_fhe(module, X=None, p_error=None, global_p_error=None, show_progress=False,
                **configuration):
    """Lower module's integer circuit to Concrete and compile it (see
    QuantizedModule.compile_fhe); returns the FheCircuit, also kept as module._fhe."""
    fhe = concrete()
    for name, value in (("p_error", p_error), ("global_p_error", global_p_error)):
        if value is not None and (isinstance(value, bool) or not isinstance(
                value, (int, float)) or not 0.0 < float(value) < 1.0):
            raise ValueError(f"{name} must be None or a probability in (0, 1), got {value!r}")
    if p_error is not None and global_p_error is not None:
        raise ValueError("give p_error (per PBS) or global_p_error (per sample), not both")
    if X is None:
        X = getattr(module, "_calibration", None)
        if X is None:
            raise ValueError("compile_fhe needs X, samples whose ranges the FHE circuit must "
                             "cover: a loaded module does not keep its calibration set")
    codes = module.quantize_input(X).reshape((-1,) + module.in_shape)
    subset, ranges = fhe_lowering.inputset(module.ops, codes)
    config = fhe.Configuration(show_progress=bool(show_progress), p_error=p_error,
                               global_p_error=global_p_error,
                               optimize_tlu_based_on_measured_bounds=False, **configuration)
    compiler = fhe.Compiler(fhe_lowering.lower(module.ops), {"x": "encrypted"})
    start = time.perf_counter()
    try:
        circuit = compiler.compile([s[None] for s in subset], config)
    except RuntimeError as exc:
        raise ValueError(f"Concrete could not compile the circuit: {exc}") from None
    compiled = FheCircuit(module, circuit, ranges, time.perf_counter() - start)
    module._fhe = compiled
    return compiled


def compiled(module):
    """module's FheCircuit, or ValueError if compile_fhe was not called."""
    circuit = getattr(module, "_fhe", None)
    if circuit is None:
        concrete()                              # ImportError first when not installed
        raise ValueError("fhe='execute' needs the FHE circuit: call module.compile_fhe() "
                         "first (then keys are generated once and cached)")
    return circuit


def execute(module, X, progress=True):
    """Returned integers (n, out) of samples X under encryption (forward(fhe="execute"))."""
    circuit = compiled(module)
    codes = module.quantize_input(X)
    circuit.check_ranges(codes)
    return circuit.run_codes(codes, progress)


def execute_codes(module, q_x, progress=True):
    """Returned integers (n, out) of input codes q_x under encryption."""
    circuit = compiled(module)
    codes = module._check_codes(q_x)
    circuit.check_ranges(codes)
    return circuit.run_codes(codes, progress)


def _progress(rows, desc):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return rows
    return tqdm(rows, desc=desc, leave=False)


# ------------------------------------------------------------------ deployment: files

def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def save(module, directory):
    """Write server.zip, client.specs.json and qatfhe.json into directory (created)."""
    circuit = compiled(module)
    os.makedirs(directory, exist_ok=True)
    server_path = os.path.join(directory, SERVER_FILE)
    circuit.circuit.server.save(server_path)
    specs = circuit.circuit.client.specs.serialize()
    with open(os.path.join(directory, SPECS_FILE), "wb") as f:
        f.write(specs)
    decode = module.ops[-1]
    client = {
        "input_quant": module.input_quant.to_dict(),
        "in_shape": list(module.in_shape),
        "out_features": int(module.out_features),
        "output": {"shape": list(module._nodes[decode.src]["shape"]),
                   "offset": None if decode.offset is None else decode.offset.tolist(),
                   "scale": decode.scale.tolist(),
                   "bias": None if decode.bias is None else decode.bias.tolist()},
    }
    client["circuit_id"] = _sha256(specs + json.dumps(client, sort_keys=True).encode())
    client.update({"format": FORMAT, "version": VERSION,
                   "specs_sha256": _sha256(specs),
                   "server_sha256": _sha256(_read(server_path))})
    _write_json(os.path.join(directory, CLIENT_FILE), client)
    return client["circuit_id"]


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}; expected a directory "
                         f"written by QuantizedModule.save_fhe") from None


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _load_client_json(directory):
    path = os.path.join(directory, CLIENT_FILE)
    try:
        spec = json.loads(_read(path))
        if spec.get("format") != FORMAT or spec.get("version") != VERSION:
            raise ValueError(f"format {spec.get('format')!r} version {spec.get('version')!r}")
        from .compile import _Op, _Quantizer
        quant = _Quantizer(**spec["input_quant"])
        out = spec["output"]
        fields = {"scale": out["scale"]}
        for key in ("offset", "bias"):
            if out[key] is not None:
                fields[key] = out[key]
        decode = _Op("decode", "output", None, **fields)
        shape = tuple(int(d) for d in out["shape"])
        in_shape = tuple(int(d) for d in spec["in_shape"])
        if decode.scale.shape != (shape[0],) or int(np.prod(shape)) != spec["out_features"]:
            raise ValueError("the output decode does not match the output shape")
        for key in ("circuit_id", "specs_sha256", "server_sha256"):
            if not isinstance(spec[key], str):
                raise ValueError(f"{key} is not a string")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path!r} is not a valid qatfhe FHE client file ({exc}); expected "
                         f"{FORMAT} version {VERSION} written by QuantizedModule.save_fhe") \
            from None
    return spec, quant, decode, in_shape, shape


# ------------------------------------------------------------------ deployment: bytes

def _pack(kind, header, payload):
    head = json.dumps(dict(header, kind=kind), sort_keys=True).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + payload


def _unpack(data, kind, what):
    """(header, payload) of envelope bytes of the expected kind."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    n = len(MAGIC)
    if data[:n] != MAGIC or len(data) < n + 4:
        raise ValueError(f"{what} are not qatfhe FHE bytes (bad magic); expected the output "
                         f"of qatfhe.fhe.Client or Server")
    (size,) = struct.unpack(">I", data[n:n + 4])
    try:
        header = json.loads(data[n + 4:n + 4 + size])
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except ValueError:
        raise ValueError(f"{what} have a corrupt header") from None
    if header.get("kind") != kind:
        raise ValueError(f"{what} hold {header.get('kind')!r}, expected {kind!r}")
    return header, data[n + 4 + size:]


def _check_ids(header, circuit_id, key_id, what):
    if header.get("circuit") != circuit_id:
        raise ValueError(f"{what} belong to another FHE circuit (id {header.get('circuit')!r}"
                         f", expected {circuit_id!r}): they were made for another model")
    if key_id is not None and header.get("keys") != key_id:
        raise ValueError(f"{what} were made with other keys (key id {header.get('keys')!r}, "
                         f"expected {key_id!r}): the ciphertext and the evaluation keys must "
                         f"come from the same Client keygen")


class Client:
    """The client side of a deployment (files of QuantizedModule.save_fhe): keys,
    quantize + encrypt, decrypt + dequantize.  The secret key never leaves this object."""

    def __init__(self, directory):
        fhe = concrete()
        self.spec, self.input_quant, self._decode, self.in_shape, self._out_shape = \
            _load_client_json(directory)
        specs = _read(os.path.join(directory, SPECS_FILE))
        if _sha256(specs) != self.spec["specs_sha256"]:
            raise ValueError(f"{os.path.join(directory, SPECS_FILE)!r} does not match "
                             f"{CLIENT_FILE} (digest differs): the files come from different "
                             f"save_fhe calls or were modified")
        try:
            self._client = fhe.Client(fhe.ClientSpecs.deserialize(specs))
        except Exception as exc:       # concrete raises RuntimeError and others
            raise ValueError(f"invalid Concrete client specs in {directory!r}: {exc}") from None
        self.circuit_id = self.spec["circuit_id"]
        self.key_id = None
        self.keygen_seconds = None

    @property
    def in_features(self):
        return int(np.prod(self.in_shape))

    def keygen(self, seed=None):
        """Generate a new key set (secret + evaluation keys); returns the seconds taken."""
        start = time.perf_counter()
        self._client.keygen(force=True, secret_seed=seed, encryption_seed=seed)
        self.key_id = secrets.token_hex(16)
        self.keygen_seconds = time.perf_counter() - start
        return self.keygen_seconds

    def _keys(self):
        if self.key_id is None:
            self.keygen()
        return self.key_id

    def save_keys(self, directory):
        """Write the key set (secret key included, unencrypted: keep it on the client)
        to directory/keys.bin with directory/keys.json (circuit and key ids)."""
        key_id = self._keys()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "keys.bin")
        if os.path.exists(path):
            os.unlink(path)                     # Concrete refuses to overwrite
        self._client.keys.save(path)
        _write_json(os.path.join(directory, "keys.json"),
                    {"format": "qatfhe-fhe-keys", "circuit": self.circuit_id, "keys": key_id})

    def load_keys(self, directory):
        """Use the key set written by save_keys (ValueError for another circuit's keys or
        unreadable files)."""
        try:
            meta = json.loads(_read(os.path.join(directory, "keys.json")))
            key_id = meta["keys"]
            if meta.get("format") != "qatfhe-fhe-keys" or not isinstance(key_id, str):
                raise ValueError("not a qatfhe key set")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{directory!r} holds no valid qatfhe key set ({exc})") from None
        _check_ids(meta, self.circuit_id, None, "the saved keys")
        try:
            self._client.keys.load(os.path.join(directory, "keys.bin"))
        except Exception as exc:
            raise ValueError(f"cannot load the key set in {directory!r}: {exc}") from None
        self.key_id = key_id

    def evaluation_keys(self):
        """The serialised evaluation keys (bytes) for the server (no secret key)."""
        key_id = self._keys()
        payload = self._client.evaluation_keys.serialize()
        return _pack("evaluation_keys", {"circuit": self.circuit_id, "keys": key_id}, payload)

    def quantize(self, X):
        """Input codes (n, C, H, W) of float samples X ((n, C, H, W) or (n, in_features))."""
        from . import _checks
        arr = _checks.samples(X, "X") if np.ndim(X) == 4 else _checks.features(
            X, self.in_features, "X")
        if arr.shape[1:] not in ((self.in_features,), self.in_shape):
            raise ValueError(f"X must have samples of shape {self.in_shape} or "
                             f"({self.in_features},), got {arr.shape[1:]}")
        return self.input_quant.quantize(arr.reshape(len(arr), -1)).reshape(
            (len(arr),) + self.in_shape)

    def encrypt(self, X):
        """One ciphertext (bytes) per sample of X: quantized and encrypted."""
        key_id = self._keys()
        out = []
        for codes in self.quantize(X):
            value = self._client.encrypt(codes[None])
            out.append(_pack("ciphertext", {"circuit": self.circuit_id, "keys": key_id,
                                            "shape": list(self.in_shape)}, value.serialize()))
        return out

    def decrypt_integers(self, results):
        """The circuit's returned integers (n, out) from the server's result bytes (one
        bytes object or a list)."""
        fhe = concrete()
        if isinstance(results, (bytes, bytearray, memoryview)):
            results = [results]
        key_id = self._keys()
        out = np.empty((len(results), int(np.prod(self._out_shape))), np.int64)
        for i, data in enumerate(results):
            header, payload = _unpack(data, "result", "result bytes")
            _check_ids(header, self.circuit_id, key_id, "result bytes")
            try:
                value = self._client.decrypt(fhe.Value.deserialize(payload))
            except Exception as exc:
                raise ValueError(f"result {i} cannot be decrypted: {exc}") from None
            out[i] = np.asarray(value).reshape(-1)
        return out

    def decrypt(self, results):
        """Float outputs (n, out) of the server's result bytes, dequantized in the clear."""
        q = self.decrypt_integers(results)
        return self._decode.affine(q.reshape((len(q),) + self._out_shape)).reshape(len(q), -1)


class Server:
    """The server side of a deployment: runs serialised ciphertexts with serialised
    evaluation keys; it never holds a secret key."""

    def __init__(self, directory):
        fhe = concrete()
        spec = _load_client_json(directory)[0]
        path = os.path.join(directory, SERVER_FILE)
        if _sha256(_read(path)) != spec["server_sha256"]:
            raise ValueError(f"{path!r} does not match {CLIENT_FILE} (digest differs): the "
                             f"files come from different save_fhe calls or were modified")
        try:
            self._server = fhe.Server.load(path)
        except Exception as exc:
            raise ValueError(f"{path!r} is not a valid Concrete server artifact: {exc}") \
                from None
        self.circuit_id = spec["circuit_id"]
        self.in_shape = tuple(spec["in_shape"])

    def run(self, ciphertext, evaluation_keys):
        """The encrypted result (bytes) of one ciphertext (bytes from Client.encrypt) under
        the client's evaluation keys (bytes from Client.evaluation_keys)."""
        fhe = concrete()
        keys_header, keys_payload = _unpack(evaluation_keys, "evaluation_keys",
                                            "evaluation keys")
        _check_ids(keys_header, self.circuit_id, None, "evaluation keys")
        header, payload = _unpack(ciphertext, "ciphertext", "ciphertext bytes")
        _check_ids(header, self.circuit_id, keys_header.get("keys"), "ciphertext bytes")
        if tuple(header.get("shape", ())) != self.in_shape:
            raise ValueError(f"the ciphertext holds a sample of shape {header.get('shape')}, "
                             f"expected {list(self.in_shape)}")
        try:
            keys = fhe.EvaluationKeys.deserialize(keys_payload)
            value = fhe.Value.deserialize(payload)
            result = self._server.run(value, evaluation_keys=keys)
        except Exception as exc:
            raise ValueError(f"Concrete refused the ciphertext or the evaluation keys: {exc}") \
                from None
        return _pack("result", {"circuit": self.circuit_id, "keys": header["keys"]},
                     result.serialize())

    def close(self):
        """Remove the temporary directory Concrete unpacked the artifact into."""
        self._server.cleanup()
