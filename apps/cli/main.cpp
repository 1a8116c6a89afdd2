// The voxgrad binary: everything happens in the command-line runner (apps/cli/cli.cpp).
#include "apps/cli/cli.h"

int main(int argc, char** argv) { return voxgrad::cli::run_cli(argc, argv); }
