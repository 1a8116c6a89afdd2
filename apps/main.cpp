// The voxgrad binary: everything happens in the command-line runner (apps/cli.cpp).
#include "apps/cli.h"

int main(int argc, char** argv) { return voxgrad::apps::run_cli(argc, argv); }
