// CSV cells (io/csv): RFC 4180 quoting read back by a strict reader, formula triggers made inert
// text, and numbers left bare so they stay numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "io/csv.h"
#include "tests/csv_reader.h"

namespace {

namespace io = voxgrad::io;
using voxgrad::test::parse_csv;

TEST(Csv, PlainTextStaysBare) {
  EXPECT_EQ(io::csv_text("case_001"), "case_001");
  EXPECT_EQ(io::csv_text(""), "");
  EXPECT_EQ(io::csv_text("a b;c'd"), "a b;c'd");
}

TEST(Csv, SeparatorsAndQuotesAreQuoted) {
  EXPECT_EQ(io::csv_text("a,b\"c"), "\"a,b\"\"c\"");
  EXPECT_EQ(io::csv_text("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(io::csv_text("two\nlines"), "\"two\nlines\"");
  EXPECT_EQ(io::csv_text("cr\rhere"), "\"cr\rhere\"");
}

TEST(Csv, FormulaTriggersBecomeQuotedText) {
  EXPECT_EQ(io::csv_text("=cmd|' /C calc'!A0"), "\"'=cmd|' /C calc'!A0\"");
  EXPECT_EQ(io::csv_text("+1"), "\"'+1\"");
  EXPECT_EQ(io::csv_text("-2+3"), "\"'-2+3\"");
  EXPECT_EQ(io::csv_text("@SUM(A1)"), "\"'@SUM(A1)\"");
  EXPECT_EQ(io::csv_text("\tx"), "\"'\tx\"");
  EXPECT_EQ(io::csv_text("=a,\"b\""), "\"'=a,\"\"b\"\"\"");
  // Only the first character matters.
  EXPECT_EQ(io::csv_text("a=b"), "a=b");
}

TEST(Csv, NumbersStayBareAndRoundTrip) {
  EXPECT_EQ(io::csv_number(-0.5), "-0.5");
  EXPECT_EQ(io::csv_number(0.5), "0.5");
  EXPECT_EQ(io::csv_number(std::numeric_limits<double>::quiet_NaN()), "nan");
  EXPECT_EQ(io::csv_number(std::numeric_limits<double>::infinity()), "nan");
  EXPECT_EQ(std::stod(io::csv_number(2.0 / 3)), 2.0 / 3);
  EXPECT_EQ(io::csv_integer(-7), "-7");
  EXPECT_EQ(io::csv_integer(1234567890123LL), "1234567890123");
}

TEST(Csv, RecordsReadBackCellForCell) {
  const std::vector<std::string> names = {"plain", "a,b\"c", "=cmd", "-1", "+x", "@y", "two\nlines", "\"", ",", ""};
  std::string text = io::csv_record({io::csv_text("case"), io::csv_text("value")});
  for (const std::string& n : names) text += io::csv_record({io::csv_text(n), io::csv_number(-0.25)});
  const auto rows = parse_csv(text);
  ASSERT_EQ(rows.size(), names.size() + 1);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"case", "value"}));
  for (std::size_t i = 0; i < names.size(); ++i) {
    ASSERT_EQ(rows[i + 1].size(), 2u) << names[i];
    const std::string& n = names[i];
    const bool formula = !n.empty() && (n[0] == '=' || n[0] == '+' || n[0] == '-' || n[0] == '@');
    EXPECT_EQ(rows[i + 1][0], formula ? "'" + n : n);
    EXPECT_EQ(std::stod(rows[i + 1][1]), -0.25);
  }
}

}  // namespace
