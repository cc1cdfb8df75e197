// ibert_run: run an exported ibert-tvm model (a Relax VM executable in a shared library) with the TVM
// runtime alone, no Python.
//
//   ibert_run MODEL.so INPUT.txt [REPEAT]
//
// INPUT.txt holds whitespace-separated integers: B L, then B*L token ids (row-major), then B*L attention
// mask values (1 = token, 0 = padding), then optionally B*L token types (the segments of sentence pairs; all 0
// where left out). The program's `main(input_ids int64[B,L], attention_mask int32[B,L],
// token_type_ids int32[B,L])` (or, in a library of shape buckets made by `ibert-tvm compile`, its function
// `main_bB_sL`) runs once
// (REPEAT times more when given, timed) and its output tensor is printed as
//
//   shape: 2 16 64
//   dtype: int8
//   values: v0 v1 ...          (all elements, row-major)
//   time_ms: median            (only with REPEAT)
//
// Errors go to stderr with a non-zero exit status.
#include <dlpack/dlpack.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
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

struct Inputs {
  int64_t batch = 0, length = 0;
  std::vector<int64_t> ids, mask, types;
};

// One token type: a whole non-negative integer within int32 (the program clamps a type past the model's last
// segment to it, so give the model's own, 0 and 1 for BERT); throws naming the word otherwise.
int64_t ParseTokenType(const std::string& word, const std::string& path) {
  size_t used = 0;
  int64_t value = -1;
  try {
    value = std::stoll(word, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != word.size() || value < 0 || value > INT32_MAX)
    throw std::runtime_error(path + ": token type '" + word + "' is not an integer in [0, 2^31)");
  return value;
}

// Read "B L ids... mask... [types...]" from a text file; throws naming what is missing.
Inputs ReadInputs(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open input file " + path);
  Inputs x;
  if (!(in >> x.batch >> x.length) || x.batch <= 0 || x.length <= 0)
    throw std::runtime_error(path + ": expected positive 'B L' first");
  const int64_t n = x.batch * x.length;
  x.ids.resize(n);
  x.mask.resize(n);
  x.types.assign(n, 0);
  for (auto* v : {&x.ids, &x.mask})
    for (int64_t& e : *v)
      if (!(in >> e)) throw std::runtime_error(path + ": expected " + std::to_string(2 * n) + " integers after 'B L'");
  std::vector<std::string> rest;  // the token types, if given: read as words, so that nothing is skipped silently
  for (std::string word; in >> word;) rest.push_back(word);
  if (!rest.empty() && static_cast<int64_t>(rest.size()) != n)
    throw std::runtime_error(path + ": expected " + std::to_string(n) + " token types after the mask, or none (found " +
                             std::to_string(rest.size()) + " more values)");
  for (size_t i = 0; i < rest.size(); ++i) x.types[i] = ParseTokenType(rest[i], path);
  return x;
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

// `main`, or the shape bucket `main_b{B}_s{L}` of a multi-shape library; throws naming both when neither exists.
ffi::Function EntryFunction(const ffi::Module& vm, const Inputs& x) {
  const std::string bucket = "main_b" + std::to_string(x.batch) + "_s" + std::to_string(x.length);
  for (const std::string& name : {std::string("main"), bucket})
    if (ffi::Optional<ffi::Function> f = vm->GetFunction(name); f.has_value()) return *f;
  throw std::runtime_error("the module has neither 'main' nor '" + bucket + "' (a bucket for B=" +
                           std::to_string(x.batch) + ", L=" + std::to_string(x.length) + ")");
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
  try {
    const Inputs x = ReadInputs(argv[2]);
    // An absolute path: dlopen would search the library path for a bare file name.
    ffi::Module lib = ffi::Module::LoadFromFile(std::filesystem::absolute(argv[1]).string());
    ffi::Module vm = GetFunction(lib, "vm_load_executable")().cast<ffi::Module>();
    GetFunction(vm, "vm_initialization")(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    ffi::Function main_fn = EntryFunction(vm, x);
    ffi::Tensor ids = MakeTensor<int64_t>(x, x.ids, DLDataType{kDLInt, 64, 1});
    ffi::Tensor mask = MakeTensor<int32_t>(x, x.mask, DLDataType{kDLInt, 32, 1});
    ffi::Tensor types = MakeTensor<int32_t>(x, x.types, DLDataType{kDLInt, 32, 1});
    ffi::Any out = main_fn(ids, mask, types);
    std::optional<ffi::Tensor> tensor = out.try_cast<ffi::Tensor>();
    if (!tensor.has_value()) throw std::runtime_error("main returned " + out.GetTypeKey() + ", not a tensor");
    PrintTensor(*tensor);
    if (argc == 4)
      std::cout << "time_ms: " << MedianMs(main_fn, ids, mask, types, std::max(1, std::atoi(argv[3]))) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "ibert_run: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
