from poolkit.cli import main

main()
