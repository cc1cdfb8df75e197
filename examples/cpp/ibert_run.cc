// ibert_run: run an exported ibert-tvm model (a Relax VM executable in a shared library) with the TVM
// runtime alone, no Python.
//
//   ibert_run MODEL.so INPUT.txt [REPEAT]
//
// INPUT.txt holds whitespace-separated integers: B L, then B*L token ids (row-major), then B*L attention
// mask values (1 = token, 0 = padding), then optionally B*L token types (the segments of sentence pairs; all 0
// where left out). The program's `main(input_ids int64[B,L], attention_mask int32[B,L],
// token_type_ids int32[B,L])` (or, in a library of shape buckets made by `ibert-tvm compile`, its function
// `main_bB_sL`) runs once (REPEAT times more when given, 1 to 10^6, timed) and its output tensor is printed as
//
//   shape: 2 16 64
//   dtype: int8
//   values: v0 v1 ...          (all elements, row-major)
//   time_ms: median            (only with REPEAT)
//
// The inputs are checked before anything runs: 1 <= B, L <= 2^20 and B*L <= 2^24, every mask value 0
// or 1 with a 1 in every row, every id below the model's vocab_size and every type below its type_vocab_size (as
// Python's runtime checks them), both sizes read from the metadata JSON that export writes beside the library
// (MODEL.json; where it is missing, a warning, and ids and types go unchecked). The JSON must hold the library's
// SHA-256 (a JSON of another model is refused), and names the target family (a library for another machine is
// refused by name) and the compiled buckets (listed where B x L is not one).
// Errors go to stderr with exit status 1 (2 for wrong arguments).
#include <dlpack/dlpack.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <new>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace ffi = tvm::ffi;

// The VM's allocator types (tvm/runtime/vm: kNaive = 1, kPooled = 2); pooled, as Python's default.
constexpr int kPooledAllocator = 2;

// TVM's kernels assume 64-byte aligned buffers (aligned vector loads): malloc's 16 bytes crash them.
constexpr size_t kAlignment = 64;

// Heap storage for the input tensors the driver creates, aligned as TVM's own allocator does.
struct CpuAlloc {
  void AllocData(DLTensor* t) {
    const size_t bytes = (ffi::GetDataSize(*t) + kAlignment - 1) / kAlignment * kAlignment;
    t->data = std::aligned_alloc(kAlignment, bytes);
    if (t->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// Bounds on the input file's shape (far above any BERT's) and on REPEAT: absurd values are refused, not allocated.
constexpr int64_t kMaxDim = int64_t{1} << 20, kMaxTokens = int64_t{1} << 24, kMaxRepeat = 1000000;

struct Inputs {
  int64_t batch = 0, length = 0;
  std::vector<int64_t> ids, mask, types;
};

// `word` as a whole integer in [lo, hi]; throws naming `what` and the word otherwise.
int64_t ParseInt(const std::string& word, const std::string& what, int64_t lo, int64_t hi) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(word, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != word.size() || value < lo || value > hi)
    throw std::runtime_error(what + " '" + word + "' is not an integer in [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + "]");
  return value;
}

// "row r, position p" of the element at row-major index i.
std::string Where(const Inputs& x, int64_t i) {
  return "row " + std::to_string(i / x.length) + ", position " + std::to_string(i % x.length);
}

// Read "B L ids... mask... [types...]" from a text file; throws naming what is missing or out of range.
Inputs ReadInputs(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open input file " + path);
  Inputs x;
  std::string b, l;
  if (!(in >> b >> l)) throw std::runtime_error(path + ": expected 'B L' first");
  x.batch = ParseInt(b, path + ": B", 1, kMaxDim);
  x.length = ParseInt(l, path + ": L", 1, kMaxDim);
  const int64_t n = x.batch * x.length;  // at most 2^40: no overflow
  if (n > kMaxTokens)
    throw std::runtime_error(path + ": B*L = " + b + "*" + l + " is more than 2^24 tokens");
  for (auto* v : {&x.ids, &x.mask})  // grown as values are read, so a short file allocates little
    for (int64_t i = 0, e; i < n; ++i) {
      if (!(in >> e)) throw std::runtime_error(path + ": expected " + std::to_string(2 * n) + " integers after 'B L'");
      v->push_back(e);
    }
  std::vector<std::string> rest;  // the token types, if given: read as words, so that nothing is skipped silently
  for (std::string word; in >> word;) rest.push_back(word);
  if (!rest.empty() && static_cast<int64_t>(rest.size()) != n)
    throw std::runtime_error(path + ": expected " + std::to_string(n) + " token types after the mask, or none (found " +
                             std::to_string(rest.size()) + " more values)");
  x.types.assign(n, 0);
  for (size_t i = 0; i < rest.size(); ++i) x.types[i] = ParseInt(rest[i], path + ": token type", 0, INT32_MAX);
  // The mask, as Python's runtime checks it: 0 or 1, and a real token in every row (the programs need one).
  for (int64_t i = 0; i < n; ++i)
    if (x.mask[i] != 0 && x.mask[i] != 1)
      throw std::runtime_error(path + ": mask value " + std::to_string(x.mask[i]) + " at " + Where(x, i) +
                               " is not 0 or 1");
  for (int64_t r = 0; r < x.batch; ++r) {
    const auto row = x.mask.begin() + r * x.length;
    if (std::find(row, row + x.length, 1) == row + x.length)
      throw std::runtime_error(path + ": mask row " + std::to_string(r) + " has no 1: every row needs a real token");
  }
  return x;
}

// `code` (a Unicode code point) appended to `out` as UTF-8.
void AppendUtf8(std::string& out, uint32_t code) {
  if (code < 0x80) {
    out += static_cast<char>(code);
    return;
  }
  const int tail = code < 0x800 ? 1 : code < 0x10000 ? 2 : 3;  // continuation bytes
  constexpr std::array<uint32_t, 4> kLead = {0, 0xC0, 0xE0, 0xF0};  // 110xxxxx, 1110xxxx or 11110xxx
  out += static_cast<char>(kLead[tail] | (code >> (6 * tail)));
  for (int k = tail - 1; k >= 0; --k) out += static_cast<char>(0x80 | ((code >> (6 * k)) & 0x3F));
}

// The 4 hex digits of a \u escape at json[at], or -1 where there are not 4.
int32_t Hex4(const std::string& json, size_t at) {
  if (at + 4 > json.size()) return -1;
  for (size_t k = at; k < at + 4; ++k)
    if (!std::isxdigit(static_cast<unsigned char>(json[k]))) return -1;
  return static_cast<int32_t>(std::stoul(json.substr(at, 4), nullptr, 16));
}

// The JSON string whose opening quote is json[i], its escapes decoded (\uXXXX to UTF-8, a surrogate pair to one
// character: Python's json.dumps writes every non-ASCII character so); leaves `i` on the closing quote. Throws
// naming a malformed escape (or a lone surrogate, which has no UTF-8) and its byte offset, or an unclosed string.
std::string ReadString(const std::string& json, size_t& i) {
  const size_t open = i;
  std::string out;
  for (++i; i < json.size() && json[i] != '"'; ++i) {
    if (json[i] != '\\') {
      out += json[i];
      continue;
    }
    const size_t start = i;
    const char c = i + 1 < json.size() ? json[++i] : '\0';
    static const std::string kSimple = "\"\\/bfnrt", kDecoded = "\"\\/\b\f\n\r\t";
    if (const size_t k = kSimple.find(c); k != std::string::npos) {
      out += kDecoded[k];
      continue;
    }
    const auto malformed = [&](size_t length, const std::string& why) {  // named up to the string's end
      length = std::min(length, json.find('"', start + 1) - start);
      return std::runtime_error("malformed JSON escape '" + json.substr(start, length) + "' at byte " +
                                std::to_string(start) + why);
    };
    if (c != 'u') throw malformed(2, "");
    int32_t code = Hex4(json, start + 2);
    if (code < 0) throw malformed(6, " (\\u takes 4 hex digits)");
    i = start + 5;
    if (code >= 0xDC00 && code <= 0xDFFF) throw malformed(6, " (the second half of a surrogate pair, alone)");
    if (code >= 0xD800 && code <= 0xDBFF) {  // the first half of a pair: the second must follow
      const int32_t low = json.compare(start + 6, 2, "\\u") == 0 ? Hex4(json, start + 8) : -1;
      if (low < 0xDC00 || low > 0xDFFF) throw malformed(6, " (the first half of a surrogate pair, alone)");
      code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
      i = start + 11;
    }
    AppendUtf8(out, static_cast<uint32_t>(code));
  }
  if (i >= json.size()) throw std::runtime_error("the JSON string at byte " + std::to_string(open) + " is not closed");
  return out;
}

// The member `section.key` of an artifact's metadata JSON, as text: a string's characters (escapes decoded), an
// array with its brackets, or a number; nullopt where there is none. Not a JSON parser, but enough for the file
// export writes: it reads strings whole (the tokenizer files quoted in it mention "vocab_size" too) and tracks the
// nesting, so that only a member of the top-level object `section` matches.
std::optional<std::string> Member(const std::string& json, const std::string& section, const std::string& key) {
  std::vector<std::string> keys;  // per open object (or array): the key of the member being read
  std::string last;               // the last string read
  for (size_t i = 0; i < json.size(); ++i) {
    const char c = json[i];
    if (c == '"') {
      last = ReadString(json, i);
    } else if (c == '{' || c == '[') {
      keys.emplace_back();
    } else if ((c == '}' || c == ']') && !keys.empty()) {
      keys.pop_back();
    } else if (c == ':' && !keys.empty()) {
      keys.back() = last;
      if (keys.size() != 2 || keys[0] != section || keys[1] != key) continue;
      size_t begin = json.find_first_not_of(" \t\r\n", i + 1);
      if (begin == std::string::npos) return std::nullopt;
      if (json[begin] == '"') return ReadString(json, begin);
      const size_t end = json[begin] == '[' ? json.find(']', begin) + 1 : json.find_first_of(",}", begin);
      std::string value;  // without its white space, a comma and a space between an array's items
      for (const char v : json.substr(begin, end - begin))
        if (!std::isspace(static_cast<unsigned char>(v))) value += v == ',' ? std::string(", ") : std::string(1, v);
      return value;
    }
  }
  return std::nullopt;
}

// SHA-256 (FIPS 180-4) of the file `path`, as lowercase hex: export records the library's in the metadata, so a
// JSON of another model, or a truncated or replaced library, is refused before the JSON's sizes are trusted.
std::string FileSha256(const std::filesystem::path& path) {
  static constexpr std::array<uint32_t, 64> k = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
      0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
      0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
      0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
      0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
      0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
      0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
      0xc67178f2};
  std::array<uint32_t, 8> h = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  const auto block = [&](const unsigned char* p) {
    std::array<uint32_t, 64> w{};
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t{p[4 * i]} << 24 | uint32_t{p[4 * i + 1]} << 16 | uint32_t{p[4 * i + 2]} << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; ++i)
      w[i] = w[i - 16] + (rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)) + w[i - 7] +
             (rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10));
    std::array<uint32_t, 8> v = h;
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = v[7] + (rotr(v[4], 6) ^ rotr(v[4], 11) ^ rotr(v[4], 25)) + ((v[4] & v[5]) ^ (~v[4] & v[6])) +
                          k[i] + w[i];
      const uint32_t t2 = (rotr(v[0], 2) ^ rotr(v[0], 13) ^ rotr(v[0], 22)) + ((v[0] & v[1]) ^ (v[0] & v[2]) ^
                                                                               (v[1] & v[2]));
      v = {t1 + t2, v[0], v[1], v[2], v[3] + t1, v[4], v[5], v[6]};
    }
    for (int i = 0; i < 8; ++i) h[i] += v[i];
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::vector<unsigned char> buffer(1 << 20);
  uint64_t bytes = 0;
  size_t held = 0;  // bytes at the front of `buffer` not yet hashed (fewer than a block)
  while (in) {
    in.read(reinterpret_cast<char*>(buffer.data() + held), static_cast<std::streamsize>(buffer.size() - held));
    const size_t got = static_cast<size_t>(in.gcount());
    bytes += got;
    held += got;
    size_t done = 0;
    for (; held - done >= 64; done += 64) block(buffer.data() + done);
    std::copy(buffer.begin() + static_cast<std::ptrdiff_t>(done), buffer.begin() + static_cast<std::ptrdiff_t>(held),
              buffer.begin());
    held -= done;
  }
  if (in.bad()) throw std::runtime_error("cannot read " + path.string());
  // the padding: a 1 bit, zeros, and the length in bits (big-endian) ending a block
  buffer[held++] = 0x80;
  const size_t padded = held <= 56 ? 64 : 128;
  std::fill(buffer.begin() + static_cast<std::ptrdiff_t>(held), buffer.begin() + static_cast<std::ptrdiff_t>(padded), 0);
  for (int i = 0; i < 8; ++i) buffer[padded - 1 - i] = static_cast<unsigned char>((bytes * 8) >> (8 * i));
  for (size_t done = 0; done < padded; done += 64) block(buffer.data() + done);
  std::ostringstream hex;
  for (const uint32_t word : h) hex << std::hex << std::setw(8) << std::setfill('0') << word;
  return hex.str();
}

// What the driver reads of the metadata JSON beside the library.
struct Metadata {
  int64_t ids = 0, types = 0;  // the model's number of token ids and of token types (vocab_size, type_vocab_size)
  std::string family;          // the target family the library was built for ("x86", "arm", "cuda")
  std::string buckets;         // the compiled shapes, "batch [..] x seq [..]" (empty where not recorded)
  std::string sha256;          // the library's SHA-256, as export recorded it
};

// The metadata JSON `path` that export writes beside the library (model.so -> model.json), or nullopt where there
// is no such file (a library exported without it, e.g. by cross.export).
std::optional<Metadata> ReadMetadata(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) return std::nullopt;
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (!in) throw std::runtime_error("cannot read " + path.string());
  const std::string text = buffer.str();
  const auto member = [&](const std::string& section, const std::string& key) {  // a malformed string: the file named
    try {
      return Member(text, section, key);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(path.string() + ": " + e.what());
    }
  };
  Metadata m;
  for (auto [key, size] : {std::pair{"vocab_size", &m.ids}, std::pair{"type_vocab_size", &m.types}}) {
    const std::optional<std::string> value = member("model", key);
    char* end = nullptr;
    errno = 0;
    const long long n = value ? std::strtoll(value->c_str(), &end, 10) : 0;
    if (value && (value->empty() || *end != '\0' || errno != 0))
      throw std::runtime_error(path.string() + ": model." + key + " is not an integer");
    if (n < 1)
      throw std::runtime_error(path.string() + ": no positive model." + key + " (not the metadata that ibert-tvm's "
                               "export writes beside a library)");
    *size = n;
  }
  m.sha256 = member("library", "sha256").value_or("");
  if (m.sha256.empty())
    throw std::runtime_error(path.string() + ": no library.sha256 (not the metadata that ibert-tvm's export writes "
                             "beside a library)");
  m.family = member("target", "family").value_or("");
  const std::optional<std::string> batches = member("buckets", "batch_sizes");
  const std::optional<std::string> lengths = member("buckets", "seq_lengths");
  if (batches && lengths) m.buckets = "batch " + *batches + " x seq " + *lengths;
  return m;
}

// The target family this driver was built for, as the metadata names families.
#if defined(__aarch64__)
constexpr const char* kHostFamily = "arm";
#else
constexpr const char* kHostFamily = "x86";
#endif

// Refuse a library built for another target family before loading it (dlopen would say only that it cannot open
// the file, or this driver would run a GPU program on the CPU).
void CheckFamily(const Metadata& m, const std::string& library) {
  if (m.family.empty() || m.family == kHostFamily) return;
  if (m.family == "cuda")
    throw std::runtime_error(library + ": built for a CUDA GPU; this driver runs CPU libraries (use Python's "
                             "ibert_tvm.load on the GPU machine)");
  throw std::runtime_error(library + ": built for the " + m.family + " target family, this driver for " +
                           kHostFamily + ": run it with the driver built for its machine (make -C examples/cpp " +
                           (m.family == "arm" ? "aarch64" : "host") + ")");
}

// Refuse an id outside [0, vocab_size) or a type outside [0, type_vocab_size): the program would clamp them.
void CheckVocab(const Inputs& x, const Metadata& v, const std::string& path) {
  for (int64_t i = 0; i < static_cast<int64_t>(x.ids.size()); ++i)
    if (x.ids[i] < 0 || x.ids[i] >= v.ids)
      throw std::runtime_error(path + ": token id " + std::to_string(x.ids[i]) + " at " + Where(x, i) +
                               " is not in [0, " + std::to_string(v.ids) + "), the model's vocabulary");
  for (int64_t i = 0; i < static_cast<int64_t>(x.types.size()); ++i)
    if (x.types[i] >= v.types)
      throw std::runtime_error(path + ": token type " + std::to_string(x.types[i]) + " at " + Where(x, i) +
                               " is not in [0, " + std::to_string(v.types) + "), the model's token types");
}

// A [B, L] CPU tensor of `dtype` holding `values` converted to that dtype.
template <typename T>
ffi::Tensor MakeTensor(const Inputs& x, const std::vector<int64_t>& values, DLDataType dtype) {
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::Shape({x.batch, x.length}), dtype, DLDevice{kDLCPU, 0});
  std::transform(values.begin(), values.end(), static_cast<T*>(t.data_ptr()),
                 [](int64_t v) { return static_cast<T>(v); });
  return t;
}

template <typename T>
void PrintValues(const ffi::Tensor& t) {
  const T* p = static_cast<const T*>(t.data_ptr());
  for (int64_t i = 0; i < t.numel(); ++i) std::cout << (i ? " " : "") << +p[i];
}

// Print shape, dtype and every element of a CPU tensor in the format documented above.
void PrintTensor(const ffi::Tensor& t) {
  std::cout << "shape:";
  for (int64_t d : t.shape()) std::cout << " " << d;
  const DLDataType dt = t.dtype();
  std::cout << "\ndtype: " << ffi::DLDataTypeToString(dt) << "\nvalues: ";
  if (dt.lanes != 1) throw std::runtime_error("vector dtypes are not printed");
  if (dt.code == kDLInt && dt.bits == 8) PrintValues<int8_t>(t);
  else if (dt.code == kDLInt && dt.bits == 16) PrintValues<int16_t>(t);
  else if (dt.code == kDLInt && dt.bits == 32) PrintValues<int32_t>(t);
  else if (dt.code == kDLInt && dt.bits == 64) PrintValues<int64_t>(t);
  else if (dt.code == kDLUInt && dt.bits == 8) PrintValues<uint8_t>(t);
  else if (dt.code == kDLFloat && dt.bits == 32) PrintValues<float>(t);
  else throw std::runtime_error("output dtype " + std::string(ffi::DLDataTypeToString(dt)) + " is not printed");
  std::cout << "\n";
}

// The module's function `name`; throws naming it when the module lacks it.
ffi::Function GetFunction(const ffi::Module& mod, const std::string& name) {
  ffi::Optional<ffi::Function> f = mod->GetFunction(name);
  if (!f.has_value()) throw std::runtime_error("the module has no function '" + name + "'");
  return *f;
}

// `main`, or the shape bucket `main_b{B}_s{L}` of a multi-shape library; throws naming both when neither exists,
// and the compiled buckets where the metadata lists them.
ffi::Function EntryFunction(const ffi::Module& vm, const Inputs& x, const std::string& buckets) {
  const std::string bucket = "main_b" + std::to_string(x.batch) + "_s" + std::to_string(x.length);
  for (const std::string& name : {std::string("main"), bucket})
    if (ffi::Optional<ffi::Function> f = vm->GetFunction(name); f.has_value()) return *f;
  throw std::runtime_error("the module has neither 'main' nor '" + bucket + "' (a bucket for B=" +
                           std::to_string(x.batch) + ", L=" + std::to_string(x.length) + ")" +
                           (buckets.empty() ? "" : "; compiled: " + buckets + " (pad the rows to a compiled length "
                                                   "with mask 0, and give a compiled number of rows)"));
}

// Median wall time in milliseconds of `repeat` calls of `main`.
double MedianMs(const ffi::Function& main_fn, const ffi::Tensor& ids, const ffi::Tensor& mask,
                const ffi::Tensor& types, int repeat) {
  std::vector<double> ms;
  for (int i = 0; i < repeat; ++i) {
    auto start = std::chrono::steady_clock::now();
    main_fn(ids, mask, types);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.so INPUT.txt [REPEAT]\n";
    return 2;
  }
  int repeat = 0;  // timed calls after the first
  try {
    if (argc == 4) repeat = static_cast<int>(ParseInt(argv[3], "REPEAT", 1, kMaxRepeat));
  } catch (const std::exception& e) {
    std::cerr << "ibert_run: " << e.what() << "\nusage: " << argv[0] << " MODEL.so INPUT.txt [REPEAT]\n";
    return 2;
  }
  try {
    const Inputs x = ReadInputs(argv[2]);
    if (!std::filesystem::is_regular_file(argv[1]))
      throw std::runtime_error(std::string(argv[1]) + ": no such library file");
    if (std::filesystem::path(argv[1]).extension() == ".json")
      throw std::runtime_error(std::string(argv[1]) + " is an artifact's metadata: pass its library (MODEL.so)");
    std::filesystem::path meta_path = std::filesystem::path(argv[1]).replace_extension(".json");
    if (!std::filesystem::exists(meta_path) && std::filesystem::is_symlink(argv[1]))  // current.so -> model-v3.so
      meta_path = std::filesystem::canonical(argv[1]).replace_extension(".json");
    const std::optional<Metadata> meta = ReadMetadata(meta_path);
    if (meta.has_value()) {
      if (FileSha256(argv[1]) != meta->sha256)
        throw std::runtime_error(std::string(argv[1]) + ": the library does not match its metadata " +
                                 meta_path.filename().string() + " (SHA-256 differs: the file is truncated or "
                                 "replaced, or the JSON belongs to another model); re-export");
      CheckFamily(*meta, argv[1]);
      CheckVocab(x, *meta, argv[2]);
    } else {
      std::cerr << "ibert_run: warning: no " << meta_path.string() << " beside the library: token ids and types are "
                << "not checked (the program clamps those outside the model's)\n";
    }
    // The link's target, as an absolute path: TVM picks the loader by the file's extension (a link may have
    // none), and dlopen would search the library path for a bare file name.
    ffi::Module lib = ffi::Module::LoadFromFile(std::filesystem::canonical(argv[1]).string());
    ffi::Module vm = GetFunction(lib, "vm_load_executable")().cast<ffi::Module>();
    GetFunction(vm, "vm_initialization")(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    ffi::Function main_fn = EntryFunction(vm, x, meta.has_value() ? meta->buckets : "");
    ffi::Tensor ids = MakeTensor<int64_t>(x, x.ids, DLDataType{kDLInt, 64, 1});
    ffi::Tensor mask = MakeTensor<int32_t>(x, x.mask, DLDataType{kDLInt, 32, 1});
    ffi::Tensor types = MakeTensor<int32_t>(x, x.types, DLDataType{kDLInt, 32, 1});
    ffi::Any out = main_fn(ids, mask, types);
    std::optional<ffi::Tensor> tensor = out.try_cast<ffi::Tensor>();
    if (!tensor.has_value()) throw std::runtime_error("main returned " + out.GetTypeKey() + ", not a tensor");
    PrintTensor(*tensor);
    if (repeat > 0) std::cout << "time_ms: " << MedianMs(main_fn, ids, mask, types, repeat) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "ibert_run: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
