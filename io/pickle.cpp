// The pickle machine for torch.save's opcode subset. Globals are looked up in a fixed allow-list
// and "called" by rebuilding their data here; nothing from the file is ever executed. Containers
// are tracked so that nesting, self-reference and teardown stay bounded whatever the file holds.
#include "io/pickle.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <iterator>
#include <set>
#include <sstream>
#include <unordered_map>

#include "engine/error.h"
#include "engine/memory_budget.h"

namespace voxgrad::io {
namespace {

using Kind = PickleValue::Kind;

const std::set<std::string>& allowed_globals() {
  static const std::set<std::string> names = {"torch._utils._rebuild_tensor_v2",
                                              "torch._utils._rebuild_parameter",
                                              "collections.OrderedDict",
                                              "torch.device",
                                              "_codecs.encode",
                                              "numpy.core.multiarray.scalar",
                                              "numpy._core.multiarray.scalar",
                                              "numpy.dtype",
                                              "numpy.core.multiarray._reconstruct",
                                              "numpy._core.multiarray._reconstruct",
                                              "numpy.ndarray",
                                              "torch.FloatStorage",
                                              "torch.HalfStorage",
                                              "torch.BFloat16Storage",
                                              "torch.DoubleStorage",
                                              "torch.LongStorage",
                                              "torch.IntStorage",
                                              "torch.ByteStorage",
                                              "torch.BoolStorage"};
  return names;
}

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  std::uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

std::size_t element_size(const std::string& dtype) {
  if (dtype == "float64" || dtype == "int64") return 8;
  if (dtype == "float32" || dtype == "int32") return 4;
  if (dtype == "float16" || dtype == "bfloat16") return 2;
  return 1;
}

template <class T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

class Machine {
 public:
  Machine(std::span<const std::byte> bytes, const std::string& name, const PersistentLoad& load,
          const PickleLimits& limits)
      : bytes_(bytes), name_(name), load_(load), limits_(limits) {}

  // Breaks every edge between containers, so that no teardown recurses deeper than one level.
  ~Machine() {
    for (const auto& c : containers_) {
      if (keep_.contains(c.get())) continue;
      auto items = std::move(c->items);
      auto entries = std::move(c->entries);
    }
  }

  PickleValue run() {
    for (;;) {
      const unsigned op = u8();
      switch (op) {
        case 0x80:
          u8();
          break;  // PROTO
        case 0x95:
          take(8);
          break;  // FRAME: a hint for buffered readers
        case '}':
          push(container(Kind::Dict));
          break;  // EMPTY_DICT
        case ']':
          push(container(Kind::List));
          break;  // EMPTY_LIST
        case ')':
          push(container(Kind::Tuple));
          break;  // EMPTY_TUPLE
        case '(':
          marks_.push_back(stack_.size());
          break;  // MARK
        case 'J':
          push(integer(static_cast<std::int32_t>(uint_le(4))));
          break;
        case 'K':
          push(integer(static_cast<std::int64_t>(uint_le(1))));
          break;
        case 'M':
          push(integer(static_cast<std::int64_t>(uint_le(2))));
          break;
        case 0x8a:
          push(integer(long1()));
          break;
        case 'G':
          push(binfloat());
          break;
        case 'X':
          push(text(Kind::String, uint_le(4)));
          break;
        case 0x8c:
          push(text(Kind::String, uint_le(1)));
          break;
        case 0x8d:
          push(text(Kind::String, uint_le(8)));
          break;
        case 'B':
          push(text(Kind::Bytes, uint_le(4)));
          break;
        case 'C':
          push(text(Kind::Bytes, uint_le(1)));
          break;
        case 'q':
          memo_put(uint_le(1));
          break;
        case 'r':
          memo_put(uint_le(4));
          break;
        case 0x94:
          memo_put(memo_.size());
          break;  // MEMOIZE
        case 'h':
          push(memo_get(uint_le(1)));
          break;
        case 'j':
          push(memo_get(uint_le(4)));
          break;
        case 0x85:
          tuple_of_top(1);
          break;
        case 0x86:
          tuple_of_top(2);
          break;
        case 0x87:
          tuple_of_top(3);
          break;
        case 't':
          push(tuple_from(pop_mark()));
          break;
        case 's':
          setitems(stack_.size() - 2);
          break;
        case 'u':
          setitems(pop_mark());
          break;
        case 'a':
          appends(stack_.size() - 1);
          break;
        case 'e':
          appends(pop_mark());
          break;
        case 0x88:
          push(boolean(true));
          break;
        case 0x89:
          push(boolean(false));
          break;
        case 'N':
          push(PickleValue{});
          break;
        case 'c':
          global();
          break;
        case 0x93:
          stack_global();
          break;
        case 'R':
          reduce();
          break;
        case 0x81:
          reduce();
          break;  // NEWOBJ: cls, args; the allow-listed classes build the same way
        case 'b':
          build();
          break;
        case 'Q':
          persistent_id();
          break;
        case '.':
          return finish();
        default:
          VG_INPUT_FAIL(name_ << ": unsupported pickle opcode 0x" << std::hex << op << std::dec << " at byte "
                              << pos_ - 1 << " (not one torch.save writes)");
      }
    }
  }

 private:
  // ---- reading the stream ----
  std::span<const std::byte> take(std::uint64_t n) {
    VG_INPUT_CHECK(n <= bytes_.size() - pos_, name_ << ": pickle truncated (needs " << n << " bytes at byte " << pos_
                                                    << ", has " << bytes_.size() - pos_ << ")");
    const auto s = bytes_.subspan(pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  unsigned u8() { return static_cast<unsigned>(take(1)[0]); }
  std::uint64_t uint_le(int n) {
    const auto s = take(static_cast<std::uint64_t>(n));
    std::uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned>(s[static_cast<std::size_t>(i)]);
    return v;
  }
  std::int64_t long1() {
    const unsigned n = u8();
    VG_INPUT_CHECK(n <= 8, name_ << ": pickle integer of " << n << " bytes is too large");
    if (n == 0) return 0;
    std::uint64_t v = uint_le(static_cast<int>(n));
    if (n < 8 && (v >> (8 * n - 1)) != 0) v |= ~std::uint64_t{0} << (8 * n);  // sign-extend
    return static_cast<std::int64_t>(v);
  }
  PickleValue binfloat() {
    const auto s = take(8);
    std::uint64_t bits = 0;
    for (std::size_t i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<unsigned>(s[i]);
    return number(std::bit_cast<double>(bits));
  }
  PickleValue text(Kind kind, std::uint64_t n) {
    const auto s = take(n);
    PickleValue v;
    v.kind = kind;
    v.text.assign(reinterpret_cast<const char*>(s.data()), s.size());
    return v;
  }
  std::string line() {
    std::string out;
    for (;;) {
      const unsigned c = u8();
      if (c == '\n') return out;
      VG_INPUT_CHECK(out.size() < 256, name_ << ": pickle global name longer than 256 bytes");
      out.push_back(static_cast<char>(c));
    }
  }

  // ---- the stack ----
  void push(PickleValue v) { stack_.push_back(std::move(v)); }
  const PickleValue& top() const {
    VG_INPUT_CHECK(!stack_.empty() && (marks_.empty() || marks_.back() < stack_.size()),
                   name_ << ": malformed pickle (stack underflow at byte " << pos_ << ")");
    return stack_.back();
  }
  PickleValue pop() {
    PickleValue v = top();
    stack_.pop_back();
    return v;
  }
  std::size_t pop_mark() {
    VG_INPUT_CHECK(!marks_.empty(), name_ << ": malformed pickle (no mark at byte " << pos_ << ")");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    return m;
  }
  // Memo copies are the one way a pickle can repeat its bytes without spending input on them: the
  // text they copy is bounded, so that a few bytes cannot ask for gigabytes of repeated strings.
  void count_copy(const PickleValue& v) {
    copied_text_ += v.text.size();
    VG_INPUT_CHECK(
        copied_text_ <= (std::uint64_t{64} << 20) + 16 * static_cast<std::uint64_t>(bytes_.size()),
        name_ << ": malformed pickle (it repeats its strings more than " << memory::format_bytes(copied_text_) << ")");
  }
  void memo_put(std::uint64_t key) {
    count_copy(top());
    memo_[key] = top();
  }
  PickleValue memo_get(std::uint64_t key) {
    const auto it = memo_.find(key);
    VG_INPUT_CHECK(it != memo_.end(), name_ << ": malformed pickle (memo entry " << key << " never stored)");
    count_copy(it->second);
    return it->second;
  }

  // ---- values ----
  static PickleValue integer(std::int64_t i) {
    PickleValue v;
    v.kind = Kind::Int;
    v.integer = i;
    return v;
  }
  static PickleValue number(double x) {
    PickleValue v;
    v.kind = Kind::Float;
    v.number = x;
    return v;
  }
  static PickleValue boolean(bool b) {
    PickleValue v;
    v.kind = Kind::Bool;
    v.boolean = b;
    return v;
  }
  PickleValue container(Kind kind) {
    PickleValue v;
    v.kind = kind;
    v.container = std::make_shared<PickleContainer>();
    containers_.push_back(v.container);
    return v;
  }
  PickleValue tuple_from(std::size_t from) {
    VG_INPUT_CHECK(from <= stack_.size() && (marks_.empty() || marks_.back() <= from),
                   name_ << ": malformed pickle (stack underflow at byte " << pos_ << ")");
    PickleValue t = container(Kind::Tuple);
    t.container->items.assign(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(from)),
                              std::make_move_iterator(stack_.end()));
    stack_.resize(from);
    return t;
  }
  void tuple_of_top(std::size_t n) {
    VG_INPUT_CHECK(stack_.size() >= n, name_ << ": malformed pickle (stack underflow at byte " << pos_ << ")");
    push(tuple_from(stack_.size() - n));
  }
  void check_underflow(std::size_t from, std::size_t below) const {
    VG_INPUT_CHECK(
        stack_.size() >= below && from >= below && from <= stack_.size() && (marks_.empty() || marks_.back() < from),
        name_ << ": malformed pickle (stack underflow at byte " << pos_ << ")");
  }
  void setitems(std::size_t from) {
    check_underflow(from, 1);
    PickleValue& dict = stack_[from - 1];
    VG_INPUT_CHECK(dict.is(Kind::Dict),
                   name_ << ": malformed pickle (items set on a " << pickle_kind_name(dict.kind) << ")");
    VG_INPUT_CHECK((stack_.size() - from) % 2 == 0, name_ << ": malformed pickle (a key without a value)");
    auto& entries = dict.container->entries;
    auto& index = dict_keys_[dict.container.get()];
    for (std::size_t i = from; i < stack_.size(); i += 2) {
      PickleValue& key = stack_[i];
      // A key set twice keeps its first place and its last value, as a Python dict does.
      const bool indexed = key.is(Kind::String) || key.is(Kind::Int);
      const std::string id = key.is(Kind::String) ? "s" + key.text : "i" + std::to_string(key.integer);
      if (indexed) {
        const auto [it, fresh] = index.try_emplace(id, entries.size());
        if (!fresh) {
          entries[it->second].second = std::move(stack_[i + 1]);
          continue;
        }
      }
      entries.emplace_back(std::move(key), std::move(stack_[i + 1]));
    }
    stack_.resize(from);
  }
  void appends(std::size_t from) {
    check_underflow(from, 1);
    PickleValue& list = stack_[from - 1];
    VG_INPUT_CHECK(list.is(Kind::List),
                   name_ << ": malformed pickle (items appended to a " << pickle_kind_name(list.kind) << ")");
    list.container->items.insert(list.container->items.end(),
                                 std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(from)),
                                 std::make_move_iterator(stack_.end()));
    stack_.resize(from);
  }

  // ---- globals ----
  void push_global(const std::string& module, const std::string& qualname) {
    const std::string full = module + "." + qualname;
    VG_INPUT_CHECK(allowed_globals().contains(full),
                   name_ << ": refuses global " << full
                         << " (only tensors, storages, OrderedDict, torch.device and numpy values are read; "
                            "nothing in the file is executed)");
    PickleValue v;
    v.kind = Kind::Global;
    v.text = full;
    push(std::move(v));
  }
  void global() {
    const std::string module = line();
    push_global(module, line());
  }
  void stack_global() {
    const PickleValue qualname = pop(), module = pop();
    VG_INPUT_CHECK(module.is(Kind::String) && qualname.is(Kind::String),
                   name_ << ": malformed pickle (STACK_GLOBAL without two strings)");
    push_global(module.text, qualname.text);
  }

  const std::vector<PickleValue>& args_of(const PickleValue& args, const std::string& callee, std::size_t min_count) {
    VG_INPUT_CHECK(args.is(Kind::Tuple) && args.container->items.size() >= min_count,
                   name_ << ": malformed pickle (" << callee << " called with a " << pickle_kind_name(args.kind)
                         << " of " << args.items().size() << " items)");
    return args.container->items;
  }

  PickleValue object(const std::string& type, const PickleValue& args) {
    PickleValue o = container(Kind::Object);
    o.text = type;
    o.container->items = {args, PickleValue{}};
    return o;
  }

  void reduce() {
    const PickleValue args = pop();
    const PickleValue callee = pop();
    VG_INPUT_CHECK(callee.is(Kind::Global), name_ << ": malformed pickle (a " << pickle_kind_name(callee.kind)
                                                  << " called at byte " << pos_ - 1 << ")");
    const std::string& f = callee.text;
    if (f == "torch._utils._rebuild_tensor_v2") {
      push(rebuild_tensor(args_of(args, f, 4)));
    } else if (f == "torch._utils._rebuild_parameter") {
      const auto& a = args_of(args, f, 1);
      VG_INPUT_CHECK(a[0].is(Kind::Tensor), name_ << ": malformed pickle (a parameter without a tensor)");
      push(a[0]);
    } else if (f == "collections.OrderedDict") {
      VG_INPUT_CHECK(args_of(args, f, 0).empty(), name_ << ": OrderedDict built from arguments is not supported");
      push(container(Kind::Dict));
    } else if (f == "_codecs.encode") {
      push(latin1_bytes(args_of(args, f, 2)));
    } else if (f.ends_with("multiarray.scalar")) {
      push(numpy_scalar(args));
    } else if (f.ends_with("._reconstruct") || f == "numpy.ndarray") {
      push(object("numpy.ndarray", args));
    } else if (f == "torch.device" || f == "numpy.dtype") {
      push(object(f, args));
    } else {
      VG_INPUT_FAIL(name_ << ": malformed pickle (" << f << " called; it is only a storage type)");
    }
  }

  void build() {
    const PickleValue state = pop();
    const PickleValue& target = top();
    if (target.is(Kind::Object)) {
      target.container->items[1] = state;
    } else {
      // An OrderedDict's attributes (a state_dict's _metadata) and a tensor's hooks say nothing
      // about the values.
      VG_INPUT_CHECK(target.is(Kind::Dict) || target.is(Kind::Tensor),
                     name_ << ": malformed pickle (state set on a " << pickle_kind_name(target.kind) << ")");
    }
  }

  void persistent_id() {
    const PickleValue pid = pop();
    VG_INPUT_CHECK(static_cast<bool>(load_), name_ << ": pickle refers to external data (a persistent id)");
    PickleValue storage = load_(pid);
    VG_CHECK(storage.is(Kind::Storage) && storage.storage != nullptr, "persistent_load must give a storage");
    push(std::move(storage));
  }

  // _codecs.encode(text, "latin1"): how protocol 2 writes a bytes object.
  PickleValue latin1_bytes(const std::vector<PickleValue>& a) {
    VG_INPUT_CHECK(a[0].is(Kind::String) && a[1].is(Kind::String) && (a[1].text == "latin1" || a[1].text == "latin-1"),
                   name_ << ": _codecs.encode is only read for latin1 text");
    PickleValue out;
    out.kind = Kind::Bytes;
    const std::string& s = a[0].text;
    for (std::size_t i = 0; i < s.size(); ++i) {
      const auto c = static_cast<unsigned char>(s[i]);
      if (c < 0x80) {
        out.text.push_back(static_cast<char>(c));
      } else {
        VG_INPUT_CHECK(
            (c == 0xc2 || c == 0xc3) && i + 1 < s.size() && (static_cast<unsigned char>(s[i + 1]) & 0xc0) == 0x80,
            name_ << ": _codecs.encode text is not latin1");
        out.text.push_back(static_cast<char>(((c & 0x03u) << 6) | (static_cast<unsigned char>(s[++i]) & 0x3fu)));
      }
    }
    return out;
  }

  // numpy.core.multiarray.scalar(dtype, bytes): the numbers nnU-Net logs. Little-endian numbers
  // become Int, Float or Bool; any other kind stays an inert Object.
  PickleValue numpy_scalar(const PickleValue& args) {
    const auto& a = args_of(args, "numpy scalar", 2);
    const PickleValue& dtype = a[0];
    if (dtype.is(Kind::Object) && dtype.text == "numpy.dtype" && a[1].is(Kind::Bytes)) {
      const auto& dtype_args = dtype.items()[0].items();
      const auto& state = dtype.items()[1].items();
      const bool little = state.size() < 2 || !state[1].is(Kind::String) || state[1].text != ">";
      if (!dtype_args.empty() && dtype_args[0].is(Kind::String) && little) {
        const std::string& code = dtype_args[0].text;
        const std::string& raw = a[1].text;
        const auto* p = reinterpret_cast<const std::byte*>(raw.data());
        if (code == "f8" && raw.size() == 8) return number(load<double>(p));
        if (code == "f4" && raw.size() == 4) return number(load<float>(p));
        if (code == "i8" && raw.size() == 8) return integer(load<std::int64_t>(p));
        if (code == "i4" && raw.size() == 4) return integer(load<std::int32_t>(p));
        if (code == "u1" && raw.size() == 1) return integer(load<std::uint8_t>(p));
        if (code == "b1" && raw.size() == 1) return boolean(load<std::uint8_t>(p) != 0);
      }
    }
    return object("numpy.scalar", args);
  }

  std::vector<std::int64_t> ints(const PickleValue& v, const char* what) {
    VG_INPUT_CHECK(v.is(Kind::Tuple) && v.items().size() <= 16,
                   name_ << ": malformed tensor (" << what << " is not a tuple of at most 16 integers)");
    std::vector<std::int64_t> out;
    for (const PickleValue& x : v.items()) {
      VG_INPUT_CHECK(x.is(Kind::Int) && x.integer >= 0 && x.integer < (std::int64_t{1} << 40),
                     name_ << ": malformed tensor (" << what << " holds a negative, huge or non-integer value)");
      out.push_back(x.integer);
    }
    return out;
  }

  // _rebuild_tensor_v2(storage, offset, size, stride, ...): the view gathered into a new
  // contiguous tensor; 16-bit floats become float32, 64-bit integers int32.
  PickleValue rebuild_tensor(const std::vector<PickleValue>& a) {
    VG_INPUT_CHECK(a[0].is(Kind::Storage) && a[1].is(Kind::Int), name_ << ": malformed tensor (no storage and offset)");
    const PickleStorage& s = *a[0].storage;
    const Shape size = ints(a[2], "size");
    const std::vector<std::int64_t> stride = ints(a[3], "stride");
    VG_INPUT_CHECK(size.size() == stride.size(),
                   name_ << ": malformed tensor (" << size.size() << " sizes, " << stride.size() << " strides)");
    VG_INPUT_CHECK(a[1].integer >= 0 && a[1].integer <= s.numel,
                   name_ << ": malformed tensor (offset " << a[1].integer << " past its storage of " << s.numel << ")");
    const std::int64_t offset = a[1].integer;
    const bool empty_view = std::find(size.begin(), size.end(), 0) != size.end();
    std::int64_t numel = empty_view ? 0 : 1;
    const auto past_storage = [&] {
      std::ostringstream m;
      m << name_ << ": malformed tensor (size " << shape_str(size) << " and stride " << shape_str(stride)
        << " at offset " << offset << " reach past its storage of " << s.numel << " elements)";
      return m.str();
    };
    if (!empty_view) {
      VG_INPUT_CHECK(offset < s.numel, past_storage());
      std::int64_t last = offset;  // the highest element the view reaches, kept below s.numel
      for (std::size_t d = 0; d < size.size(); ++d) {
        VG_INPUT_CHECK(memory::saturating_product({numel, size[d]}) <= static_cast<std::uint64_t>(s.numel),
                       name_ << ": malformed tensor (size " << shape_str(size)
                             << " has more elements than its storage of " << s.numel << ")");
        numel *= size[d];
        if (size[d] == 1) continue;
        VG_INPUT_CHECK(stride[d] <= (s.numel - 1 - last) / (size[d] - 1), past_storage());
        last += (size[d] - 1) * stride[d];
      }
    }
    DType out_type = DType::Float32;
    if (s.dtype == "float64") out_type = DType::Float64;
    if (s.dtype == "int64" || s.dtype == "int32") out_type = DType::Int32;
    if (s.dtype == "uint8" || s.dtype == "bool") out_type = DType::UInt8;
    PickleValue v;
    v.kind = Kind::Tensor;
    v.tensor = empty(size, out_type);
    const std::size_t es = element_size(s.dtype);
    auto* out = static_cast<unsigned char*>(v.tensor.raw_data());
    std::vector<std::int64_t> index(size.size(), 0);
    std::int64_t at = offset;
    for (std::int64_t i = 0; i < numel; ++i) {
      const std::byte* p = s.bytes.data() + static_cast<std::size_t>(at) * es;
      if (s.dtype == "float32") {
        reinterpret_cast<float*>(out)[i] = load<float>(p);
      } else if (s.dtype == "float16") {
        reinterpret_cast<float*>(out)[i] = half_to_float(load<std::uint16_t>(p));
      } else if (s.dtype == "bfloat16") {
        reinterpret_cast<float*>(out)[i] = std::bit_cast<float>(std::uint32_t{load<std::uint16_t>(p)} << 16);
      } else if (s.dtype == "float64") {
        reinterpret_cast<double*>(out)[i] = load<double>(p);
      } else if (s.dtype == "int64" || s.dtype == "int32") {
        const std::int64_t x = s.dtype == "int64" ? load<std::int64_t>(p) : load<std::int32_t>(p);
        VG_INPUT_CHECK(x >= INT32_MIN && x <= INT32_MAX,
                       name_ << ": integer tensor value " << x << " does not fit the int32 tensors voxgrad holds");
        reinterpret_cast<std::int32_t*>(out)[i] = static_cast<std::int32_t>(x);
      } else {
        out[i] = static_cast<unsigned char>(load<std::uint8_t>(p));
      }
      for (std::size_t d = size.size(); d-- > 0;) {  // next index, row-major
        at += stride[d];
        if (++index[d] < size[d]) break;
        at -= stride[d] * size[d];
        index[d] = 0;
      }
    }
    return v;
  }

  // ---- the result ----
  // The height of `v` (1 for a scalar); throws past the depth limit or on a container that holds itself.
  int height(const PickleValue& v, int depth, std::unordered_map<const PickleContainer*, int>& seen) {
    if (v.container == nullptr) return 1;
    VG_INPUT_CHECK(depth <= limits_.max_depth,
                   name_ << ": pickle nests deeper than " << limits_.max_depth << " levels");
    const auto [it, fresh] = seen.try_emplace(v.container.get(), -1);
    if (!fresh) {
      VG_INPUT_CHECK(it->second >= 0, name_ << ": pickle holds a container that contains itself");
      VG_INPUT_CHECK(depth + it->second - 1 <= limits_.max_depth,
                     name_ << ": pickle nests deeper than " << limits_.max_depth << " levels");
      return it->second;
    }
    int h = 0;
    for (const PickleValue& x : v.container->items) h = std::max(h, height(x, depth + 1, seen));
    for (const auto& [k, x] : v.container->entries)
      h = std::max({h, height(k, depth + 1, seen), height(x, depth + 1, seen)});
    seen[v.container.get()] = h + 1;
    return h + 1;
  }

  PickleValue finish() {
    PickleValue result = pop();
    std::unordered_map<const PickleContainer*, int> seen;
    height(result, 1, seen);
    for (const auto& [c, h] : seen) keep_.insert(c);
    return result;
  }

  std::span<const std::byte> bytes_;
  const std::string& name_;
  const PersistentLoad& load_;
  PickleLimits limits_;
  std::size_t pos_ = 0;
  std::vector<PickleValue> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, PickleValue> memo_;
  std::vector<std::shared_ptr<PickleContainer>> containers_;
  std::set<const PickleContainer*> keep_;
  std::unordered_map<const PickleContainer*, std::unordered_map<std::string, std::size_t>> dict_keys_;
  std::uint64_t copied_text_ = 0;
};

}  // namespace

const std::vector<PickleValue>& PickleValue::items() const {
  static const std::vector<PickleValue> none;
  return container != nullptr ? container->items : none;
}

const std::vector<std::pair<PickleValue, PickleValue>>& PickleValue::entries() const {
  static const std::vector<std::pair<PickleValue, PickleValue>> none;
  return container != nullptr ? container->entries : none;
}

const PickleValue* PickleValue::get(const std::string& key) const {
  for (const auto& [k, v] : entries())
    if (k.is(Kind::String) && k.text == key) return &v;
  return nullptr;
}

const char* pickle_kind_name(PickleValue::Kind k) {
  switch (k) {
    case Kind::None:
      return "None";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::String:
      return "str";
    case Kind::Bytes:
      return "bytes";
    case Kind::List:
      return "list";
    case Kind::Tuple:
      return "tuple";
    case Kind::Dict:
      return "dict";
    case Kind::Tensor:
      return "tensor";
    case Kind::Object:
      return "object";
    case Kind::Global:
      return "global";
    case Kind::Storage:
      return "storage";
  }
  return "?";
}

std::string torch_storage_dtype(const std::string& global) {
  static const std::pair<const char*, const char*> table[] = {
      {"torch.FloatStorage", "float32"},  {"torch.HalfStorage", "float16"}, {"torch.BFloat16Storage", "bfloat16"},
      {"torch.DoubleStorage", "float64"}, {"torch.LongStorage", "int64"},   {"torch.IntStorage", "int32"},
      {"torch.ByteStorage", "uint8"},     {"torch.BoolStorage", "bool"}};
  for (const auto& [g, d] : table)
    if (global == g) return d;
  return "";
}

std::size_t torch_element_size(const std::string& dtype) { return element_size(dtype); }

PickleValue read_pickle(std::span<const std::byte> bytes, const std::string& name, const PersistentLoad& load,
                        const PickleLimits& limits) {
  Machine machine(bytes, name, load, limits);
  return machine.run();
}

}  // namespace voxgrad::io
