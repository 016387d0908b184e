from ductwork.cli import main

main()
