from newsdl.cli import main

main()
