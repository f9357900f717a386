"""Tokenizers: characters, byte-level BPE from scratch, the same BPE with ``tokenizers``, GPT-2's BPE, and the
course tokenizer that chapters 04-06 share, all built in chapter 01.

- :class:`CharTokenizer`: one id per character seen in training; anything else maps to an explicit ``<unk>`` id.
- :class:`BPETokenizer`: byte-level byte-pair encoding in pure Python (train, encode, decode, save/load). Byte-level
  means there is no unknown token: every string, including the empty one, round-trips exactly.
  :meth:`BPETokenizer.from_tiktoken_ranks` loads GPT-2's merge ranks and then gives the same ids as ``tiktoken``.
- :func:`train_library_bpe`: the same algorithm trained by the ``tokenizers`` library (Rust).
- :func:`gpt2_encoding`: GPT-2's real tokenizer as a ``tiktoken.Encoding``, offline.
- :func:`course_tokenizer`: THE tokenizer of the course models (a :class:`CourseTokenizer`), trained on the train
  verses of both languages and cached on disk.
"""

from __future__ import annotations

import heapq
import json
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

import regex

from helpers.data import corpus_text, gpt2_ranks_path
from helpers.env import artifact_dir, atomic_write_bytes, pick

#: GPT-2's pre-tokenization pattern (as ``tiktoken`` writes it): contractions, runs of letters, of digits, of other
#: symbols (each optionally led by one space), and whitespace. BPE merges never cross these chunks.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOT = "<|endoftext|>"
GPT2_EOT_ID = 50256
#: The course tokenizer's special tokens, in id order 0-3: end of text, padding, separator (source | target), mask.
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|sep|>", "<|mask|>")


def _check_text(text) -> str:
    """``text`` itself, or a TypeError; a lone surrogate (not valid Unicode, so not encodable as UTF-8) becomes
    U+FFFD, the replacement character, as in ``tiktoken``: it is marked, never dropped."""
    if not isinstance(text, str):
        raise TypeError(f"A tokenizer encodes a str, got {type(text).__name__}; decode bytes first (bytes.decode('utf-8')).")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _check_ids(ids, vocab_size: int) -> list[int]:
    """The ids of one sequence as Python ints: a sequence of integers, a 1-D tensor or NumPy array, or a (1, T) one
    (what ``GPT.generate`` returns for one prompt)."""
    kind = type(ids).__name__
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"decode takes a list of token ids, got {kind}.")
    if hasattr(ids, "tolist"):  # tensors and arrays become (nested) lists of Python numbers
        ids = ids.tolist()
    if not isinstance(ids, Iterable):
        raise TypeError(f"decode takes a sequence of token ids, got a single {kind}; for one id write decode([i]).")
    ids = list(ids)
    if len(ids) == 1 and isinstance(ids[0], (list, tuple)):  # a batch of one row, shaped (1, T)
        ids = list(ids[0])
    checked = []
    for pos, i in enumerate(ids):
        if hasattr(i, "tolist"):  # a NumPy scalar or a 0-d tensor
            i = i.tolist()
        if isinstance(i, (list, tuple)):
            raise ValueError(
                f"decode takes one sequence of token ids, got a batch of {len(ids)} rows; decode each row: "
                "[tok.decode(row) for row in out]."
            )
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"Token ids must be integers, got {i!r} ({type(i).__name__}) at position {pos}.")
        checked.append(i)
    bad = [i for i in checked if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"Token ids {bad[:5]} are outside this tokenizer's vocabulary (0..{vocab_size - 1}).")
    return checked


def tokens_per_char(encode: Callable[[str], list], texts: Iterable[str]) -> float:
    """Compression of a tokenizer on ``texts``: tokens produced per character (lower = fewer tokens for the model).

    First used in chapter 01, section 3.
    """
    n_tokens = n_chars = 0
    for text in texts:
        n_tokens += len(encode(text))
        n_chars += len(text)
    if n_chars == 0:
        raise ValueError("tokens_per_char needs at least one non-empty text.")
    return n_tokens / n_chars


# ------------------------------------------------------------------------------------------------ characters
class CharTokenizer:
    """One id per character. Id 0 is ``<unk>``: a character not seen by :meth:`from_text` is encoded as
    ``unk_id`` (never dropped), and ``unk_id`` decodes to the string ``"<unk>"``. Taught in chapter 01, section 1."""

    UNK = "<unk>"

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer needs distinct single characters; build it with CharTokenizer.from_text(text).")
        self.itos = [self.UNK, *chars]
        self.stoi = {c: i for i, c in enumerate(chars, start=1)}
        self.unk_id = 0

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary is every distinct character of ``text``, in sorted order, after ``<unk>``."""
        text = _check_text(text)
        if not text:
            raise ValueError("CharTokenizer.from_text needs a non-empty training text.")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, self.unk_id) for c in _check_text(text)]

    def decode(self, ids) -> str:
        return "".join(self.itos[i] for i in _check_ids(ids, self.vocab_size))


# ------------------------------------------------------------------------------------------ BPE from scratch
def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right (so ``a a a`` with
    pair ``(a, a)`` gives ``new a``). Taught in chapter 01, section 2.2."""
    out, i, n = [], 0, len(ids)
    first, second = pair
    while i < n:
        if i < n - 1 and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _split_on_specials(text: str, specials: Iterable[str]) -> list[str]:
    """``text`` cut around every occurrence of a special token, specials kept as their own items."""
    specials = sorted(specials, key=len, reverse=True)  # longest first, so one special never hides inside another
    if not specials:
        return [text]
    return [part for part in regex.split("(" + "|".join(regex.escape(s) for s in specials) + ")", text) if part]


class BPETokenizer:
    """Byte-level byte-pair encoding, written out in Python.

    The text is cut into chunks by ``pattern`` (GPT-2's regex by default), each chunk becomes its UTF-8 bytes, and
    the learned merges are applied: ``merges[(left_id, right_id)] = new_id``, lower ``new_id`` = learned earlier =
    applied first. Base tokens are the 256 bytes (``byte_ids[b]`` is the id of byte ``b``: ``b`` itself for a
    tokenizer we train, GPT-2's own order for :meth:`from_tiktoken_ranks`). Special tokens get the ids after that.

    Build one with :meth:`train` (a classmethod), :meth:`from_tiktoken_ranks` or :meth:`load`.

    Taught in chapter 01, section 2.4.
    """

    def __init__(
        self,
        byte_ids,
        merges: dict[tuple[int, int], int],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_PATTERN,
    ):
        byte_ids = [int(i) for i in byte_ids]
        if len(byte_ids) != 256 or len(set(byte_ids)) != 256:
            raise ValueError("byte_ids must give 256 distinct ids, one per byte value.")
        vocab = {i: bytes([b]) for b, i in enumerate(byte_ids)}
        ordered = {}
        for (left, right), new in sorted(merges.items(), key=lambda kv: kv[1]):
            if left not in vocab or right not in vocab or new in vocab:
                raise ValueError(f"Merge ({left}, {right}) -> {new} uses an unknown id or reuses an id; the merges are corrupt.")
            vocab[new] = vocab[left] + vocab[right]
            ordered[(left, right)] = new
        special_tokens = dict(special_tokens or {})
        for name, i in special_tokens.items():
            if not isinstance(name, str) or not name or i in vocab:
                raise ValueError(f"Special token {name!r} -> {i} is empty or collides with another id.")
            vocab[i] = name.encode("utf-8")
        if sorted(vocab) != list(range(len(vocab))):
            raise ValueError("Token ids must be 0..vocab_size-1 without gaps.")
        self.pattern = pattern
        self._regex = regex.compile(pattern)
        self.byte_ids = byte_ids
        self._merges = ordered
        self.special_tokens = special_tokens
        self.vocab = vocab
        self._chunk_cache: dict[bytes, list[int]] = {}

    # ----------------------------------------------------------------------------------------------- training
    @classmethod
    def train(
        cls, text: str, vocab_size: int, special_tokens: Iterable[str] = (), pattern: str = GPT2_PATTERN, verbose: bool = False
    ) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text`` (fewer if the text runs out of pairs).

        Words (pre-token chunks) are counted once; each merge then updates the pair counts of only the words that
        contain the merged pair, and a heap finds the next most frequent pair. Ties go to the smallest ``(left,
        right)`` ids, so training is deterministic. Special tokens in ``text`` are cut out before counting.
        """
        text = _check_text(text)
        special_tokens = list(dict.fromkeys(special_tokens))
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
            raise ValueError(
                f"vocab_size must be an int >= 256 + number of special tokens ({256 + len(special_tokens)}), "
                f"got {vocab_size!r}: the 256 bytes are always in the vocabulary."
            )
        compiled = regex.compile(pattern)
        counts = Counter()
        for part in _split_on_specials(text, special_tokens):
            if part not in special_tokens:
                counts.update(compiled.findall(part))
        words = [list(w.encode("utf-8")) for w in counts]
        freqs = list(counts.values())

        pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
        where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words that (may) contain it
        for i, word in enumerate(words):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freqs[i]
                where[pair].add(i)
        heap = [(-c, pair) for pair, c in pair_counts.items()]
        heapq.heapify(heap)

        merges: dict[tuple[int, int], int] = {}
        n_merges = vocab_size - 256 - len(special_tokens)
        start = time.perf_counter()
        while len(merges) < n_merges and heap:
            neg_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg_count or neg_count == 0:
                continue  # a stale heap entry: this pair's count changed after it was pushed
            new_id = 256 + len(merges)
            merges[pair] = new_id
            changed = set()
            for i in where.pop(pair):
                word = words[i]
                merged = merge_pair(word, pair, new_id)
                if len(merged) == len(word):
                    continue
                f = freqs[i]
                for p in zip(word, word[1:]):
                    pair_counts[p] -= f
                    changed.add(p)
                for p in zip(merged, merged[1:]):
                    pair_counts[p] += f
                    where[p].add(i)
                    changed.add(p)
                words[i] = merged
            del pair_counts[pair]
            changed.discard(pair)
            for p in changed:
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], p))
            if verbose and len(merges) % 100 == 0:
                print(f"{len(merges)} merges, {time.perf_counter() - start:.1f} s")
        specials = {s: 256 + len(merges) + k for k, s in enumerate(special_tokens)}
        return cls(range(256), merges, specials, pattern)

    @classmethod
    def from_tiktoken_ranks(
        cls, ranks: dict[bytes, int], special_tokens: dict[str, int] | None = None, pattern: str = GPT2_PATTERN
    ) -> BPETokenizer:
        """A tokenizer from ``tiktoken`` merge ranks (``bytes -> rank``), e.g. GPT-2's.

        tiktoken stores only the tokens; the merge that made each token is recovered by running BPE on the token's
        own bytes with the merges ranked below it: what is left are the two parts that were merged last.

        Taught in chapter 01, section 4.1.
        """
        if len(ranks) < 256 or any(bytes([b]) not in ranks for b in range(256)):
            raise ValueError("Byte-level ranks must contain all 256 single bytes.")
        byte_ids = [ranks[bytes([b])] for b in range(256)]
        merges = {}
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            if len(token) == 1:
                continue
            parts = _bpe_by_rank(ranks, token, max_rank=rank)
            if len(parts) != 2:
                raise ValueError(f"Token {token!r} (rank {rank}) cannot be built from two lower-ranked tokens.")
            merges[(ranks[parts[0]], ranks[parts[1]])] = rank
        return cls(byte_ids, merges, special_tokens, pattern)

    # ------------------------------------------------------------------------------------------------ encoding
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def merges(self) -> dict[tuple[int, int], int]:
        """``{(left_id, right_id): new_id}`` in the order the merges were learned (= the order they are applied)."""
        return dict(self._merges)

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        cached = self._chunk_cache.get(chunk)
        if cached is not None:
            return cached
        ids = [self.byte_ids[b] for b in chunk]
        merges = self._merges
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            ids = merge_pair(ids, pair, merges[pair])
        if len(self._chunk_cache) < 200_000:  # bounded: a huge text of unique words must not eat the memory
            self._chunk_cache[chunk] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` treating any special-token string in it as plain text."""
        ids = []
        for chunk in self._regex.findall(_check_text(text)):
            ids.extend(self._encode_chunk(chunk.encode("utf-8")))
        return ids

    def encode(self, text: str, allowed_special: str | Iterable[str] = "none") -> list[int]:
        """Token ids of ``text``. ``allowed_special``: ``"none"`` (default: special-token strings in the text are
        encoded as ordinary text, so user text can never inject a control token), ``"all"``, or a set of names."""
        text = _check_text(text)
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        elif allowed_special == "none":
            allowed = set()
        else:
            if isinstance(allowed_special, str):
                raise ValueError(f"allowed_special is 'none', 'all' or a set of special tokens, got {allowed_special!r}.")
            allowed = set(allowed_special)
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise ValueError(f"Unknown special tokens {sorted(unknown)}; this tokenizer has {sorted(self.special_tokens)}.")
        ids = []
        for part in _split_on_specials(text, allowed):
            ids.extend([self.special_tokens[part]] if part in allowed else self.encode_ordinary(part))
        return ids

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self.vocab[i] for i in _check_ids(ids, self.vocab_size))

    def decode(self, ids) -> str:
        """The text of ``ids``. A sequence that cuts a multi-byte character in half shows U+FFFD (�) there."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        return {
            "kind": "byte-level-bpe",
            "version": 1,
            "pattern": self.pattern,
            "byte_ids": self.byte_ids,
            "merges": [[a, b, new] for (a, b), new in self._merges.items()],
            "special_tokens": self.special_tokens,
        }

    def save(self, path) -> Path:
        path = Path(path)
        atomic_write_bytes(path, json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8"))
        return path

    @classmethod
    def load(cls, path) -> BPETokenizer:
        path = Path(path)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if state.get("kind") != "byte-level-bpe" or state.get("version") != 1:
                raise ValueError("not a byte-level-bpe file of version 1")
            merges = {(int(a), int(b)): int(new) for a, b, new in state["merges"]}
            return cls(
                state["byte_ids"], merges, {str(k): int(v) for k, v in state["special_tokens"].items()}, str(state["pattern"])
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, regex.error) as err:
            raise ValueError(f"{path} is not a readable BPETokenizer file ({err}); write one with BPETokenizer.save().") from err


def _bpe_by_rank(ranks: dict[bytes, int], token: bytes, max_rank: int | None = None) -> list[bytes]:
    """tiktoken's rule: repeatedly merge the adjacent pair whose concatenation has the lowest rank (below max_rank)."""
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best is None or (max_rank is not None and best_rank >= max_rank):
            return parts
        parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2 :]


# ------------------------------------------------------------------------------------ the tokenizers library
@cache
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (used by byte-level ``tokenizers`` vocabularies:
    a space shows as 'Ġ', a newline as 'Ċ')."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(extra)}}


def byte_level_token_bytes(token: str) -> bytes:
    """The raw bytes behind one byte-level token string of ``tokenizers`` (``'Ġthe'`` -> ``b' the'``).

    Taught in chapter 01, section 3.
    """
    inverse = {c: b for b, c in _byte_to_unicode().items()}
    try:
        return bytes(inverse[c] for c in token)
    except KeyError as err:
        raise ValueError(f"{token!r} is not a byte-level token: its characters must come from GPT-2's byte map.") from err


def train_library_bpe(texts, vocab_size: int, special_tokens: Iterable[str] = ()):
    """Byte-level BPE trained by the ``tokenizers`` library: GPT-2's pre-tokenizer, all 256 bytes in the alphabet,
    ``special_tokens`` first (ids 0, 1, ...). ``texts`` is a str or an iterable of str. Returns a ``tokenizers.Tokenizer``.
    Taught in chapter 01, section 3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if isinstance(texts, str):
        texts = [texts]
    special_tokens = list(special_tokens)
    if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size must be an int >= 256 + number of special tokens, got {vocab_size!r}.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


# ------------------------------------------------------------------------------------------------------ GPT-2
@cache
def gpt2_ranks() -> dict[bytes, int]:
    """GPT-2's 50,000 merges + 256 bytes as ``{token_bytes: rank}``, from the file shipped with ``openai-whisper``.

    First used in chapter 01, section 4.1.
    """
    from tiktoken.load import load_tiktoken_bpe

    return load_tiktoken_bpe(str(gpt2_ranks_path()))  # gpt2_ranks_path checks the file's SHA-256


@cache
def gpt2_encoding():
    """GPT-2's tokenizer as a ``tiktoken.Encoding`` (50,257 ids; ``<|endoftext|>`` = 50256), built offline.

    First used in chapter 01, section 3.1; section 4 looks at it closely.
    """
    import tiktoken

    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=gpt2_ranks(),
        special_tokens={GPT2_EOT: GPT2_EOT_ID},
        explicit_n_vocab=50257,
    )


# -------------------------------------------------------------------------------------- the course tokenizer
class CourseTokenizer:
    """The tokenizer of the course's models: byte-level BPE (``tokenizers``) with :data:`SPECIAL_TOKENS`.

    ``encode`` adds nothing: a caller writes ``ids + [tok.eot_id]`` where it wants an end of text. Special-token
    strings that appear in a text (``"<|sep|>"``) are read as those tokens. Byte-level, so nothing is unknown.

    Taught in chapter 01, section 3.2.
    """

    def __init__(self, tokenizer):
        ids = [tokenizer.token_to_id(s) for s in SPECIAL_TOKENS]
        if None in ids or len(set(ids)) != len(ids):
            raise ValueError(f"A course tokenizer needs the special tokens {SPECIAL_TOKENS}; train it with course_tokenizer().")
        self.tokenizer = tokenizer
        self.eot_id, self.pad_id, self.sep_id, self.mask_id = ids
        self.special_ids = frozenset(ids)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(_check_text(text), add_special_tokens=False).ids

    def encode_batch(self, texts) -> list[list[int]]:
        """The ids of each of ``texts``, as :meth:`encode` gives them, in one call (chapter 04, section 2)."""
        texts = [_check_text(t) for t in texts]
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids, skip_special: bool = True) -> str:
        return self.tokenizer.decode(_check_ids(ids, self.vocab_size), skip_special_tokens=skip_special)

    def to_hf(self):
        """A ``transformers.PreTrainedTokenizerFast`` with eos/bos = ``<|endoftext|>`` and pad, sep, mask set.

        First used in chapter 04, section 9.
        """
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        eot, pad, sep, mask = SPECIAL_TOKENS
        return PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(self.tokenizer.to_str()),
            eos_token=eot,
            bos_token=eot,
            pad_token=pad,
            sep_token=sep,
            mask_token=mask,
        )

    def save(self, path) -> Path:
        path = Path(path)
        atomic_write_bytes(path, self.tokenizer.to_str().encode("utf-8"))
        return path

    @classmethod
    def load(cls, path) -> CourseTokenizer:
        from tokenizers import Tokenizer

        path = Path(path)
        try:
            tokenizer = Tokenizer.from_str(path.read_text(encoding="utf-8"))
        except Exception as err:  # tokenizers raises its own Exception type for malformed JSON
            raise ValueError(f"{path} is not a readable tokenizer file ({err}); write one with CourseTokenizer.save().") from err
        return cls(tokenizer)


_PROBE = "In the beginning God created the heavens and the earth.\nAu commencement, Dieu créa les cieux et la terre."


def course_tokenizer(vocab_size: int | None = None) -> CourseTokenizer:
    """The course tokenizer with ``vocab_size`` ids (default ``pick(smoke=512, full=4096)``), trained on
    ``corpus_text("train")`` (every 8th verse in smoke mode) and cached under ``artifact_dir("tokenizer")``.

    A cached file is used only if it loads, has the right size and special ids, and round-trips a probe text;
    otherwise it is rebuilt (with a warning). Taught in chapter 01, section 3.2."""
    vocab_size = pick(smoke=512, full=4096) if vocab_size is None else vocab_size
    if not isinstance(vocab_size, int) or vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be an int >= {256 + len(SPECIAL_TOKENS)}, got {vocab_size!r}.")
    path = artifact_dir("tokenizer") / f"course-bpe-{vocab_size}.json"
    if path.exists():
        try:
            tok = CourseTokenizer.load(path)
            if (
                tok.vocab_size == vocab_size
                and (tok.eot_id, tok.pad_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3)
                and tok.decode(tok.encode(_PROBE)) == _PROBE
            ):
                return tok
            problem = "it does not match the requested tokenizer"
        except ValueError as err:
            problem = str(err)
        warnings.warn(f"Rebuilding the cached tokenizer {path.name}: {problem}.", stacklevel=2)
    lines = corpus_text("train").splitlines()
    lines = pick(smoke=lines[::8], full=lines)
    tok = CourseTokenizer(train_library_bpe(lines, vocab_size, special_tokens=SPECIAL_TOKENS))
    tok.save(path)
    return tok
